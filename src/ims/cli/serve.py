"""`ims serve` and `ims worker`: the server processes (the app is built by ims.api.server) and the background
workers (ims.services.startup)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from ims.api.server import SUPERVISOR_ENV, WAKE_ENV, build_app
from ims.services.context import ServiceContext
from ims.services.startup import configure_logging, prepare, start_workers
from ims.settings import Settings, load_settings_or_exit

log = logging.getLogger("ims")


def default_workers() -> int:
    """Server processes when `--workers` is not given: one per CPU, at most 4 (reads scale with processes;
    SQLite writes do not, and every process holds its own caches)."""
    return max(1, min(os.cpu_count() or 1, 4))


# With several server processes the background workers run here, in the supervisor; the server processes
# wake them through a datagram socket after queuing work (their end of it is in ims.api.server).
def _wake_listener(ctx: ServiceContext) -> tuple[str, Callable[[], None]]:
    address = f"ims-wake-{os.getpid()}-{uuid.uuid4().hex[:12]}"  # abstract namespace: no file to remove
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + address)
    receiver.settimeout(0.5)
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                receiver.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            ctx.notify_tasks()

    thread = threading.Thread(target=listen, name="ims-wake", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join(2)
        receiver.close()

    return address, stop


def _http_options(settings: Settings) -> dict[str, Any]:
    """Idle keep-alive longer than clients' poll intervals and load balancers' idle timeouts (60 s): with
    uvicorn's 5 s, a client polling every 5 s reused a connection just as the server closed it."""
    return {"timeout_keep_alive": max(1, round(settings.keepalive_seconds))}


def serve(host: str, port: int, workers: int | None = None) -> None:
    workers = workers or default_workers()
    import uvicorn

    from ims.cli.server_processes import BalancedProcesses, free_port_or_exit

    if workers > 1:
        port = free_port_or_exit(host, port)
    # Job stages call back to this address (ims.jobs.spec.api_url); every server process reads it from here.
    os.environ["IMS_HOST"], os.environ["IMS_PORT"] = host, str(port)
    settings = load_settings_or_exit()
    problem = settings.auth_start_problem()
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    configure_logging(settings)
    prepare(settings).database.dispose()
    log.info("IMS listening on http://%s:%s (database %s)", host, port, settings.effective_database_url)
    if workers > 1:
        # Counters of every server process (and of the workers here) summed at each scrape (ims.api.metrics).
        from ims.api import metrics

        metrics.prepare_multiprocess(settings.data_dir)
        metrics.setup()
        # Exactly one set of background workers (S3 tasks, jobs, reconciler): here, not in each server process.
        ctx = ServiceContext.from_settings(settings) if settings.run_workers else None
        stop_workers = start_workers(ctx) if ctx is not None else None
        stop_wake = None
        if ctx is not None:
            os.environ[WAKE_ENV], stop_wake = _wake_listener(ctx)
        os.environ["IMS_RUN_WORKERS"] = "false"
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        try:
            config = uvicorn.Config(
                "ims.api.server:build_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=settings.log_level.lower(),
                access_log=False,
                **_http_options(settings),
            )
            with contextlib.suppress(KeyboardInterrupt):
                BalancedProcesses(config).run()
        finally:
            if stop_wake is not None:
                stop_wake()
            if stop_workers is not None:
                stop_workers()
            if ctx is not None:
                ctx.database.dispose()
    else:
        uvicorn.run(
            build_app(settings),
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
            access_log=False,
            **_http_options(settings),
        )


def run_worker() -> None:
    """`ims worker`: the background workers alone (S3 tasks, jobs, reconciler) until SIGTERM or SIGINT."""
    import signal
    import threading

    settings = load_settings_or_exit()
    configure_logging(settings)
    ctx = prepare(settings)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    stop = start_workers(ctx)
    log.info(
        "IMS worker running (database %s, jobs in %s)", settings.effective_database_url, settings.effective_jobs_dir
    )
    try:
        done.wait()
    finally:
        stop()
        ctx.database.dispose()

"""Building and running the server process: settings, migrations, buckets, the app and its workers."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from ims.api.app import ROUTER_HOOKS, create_app
from ims.api.deps import Services
from ims.api.routers import jobs as jobs_router
from ims.artifacts.s3 import is_transient
from ims.services import artifact_tasks
from ims.services import jobs as jobs_service
from ims.services.context import ServiceContext
from ims.settings import Settings, load_settings_or_exit
from ims.store import migrate
from ims.tasks.worker import TaskWorker

log = logging.getLogger("ims")

Stopper = Callable[[], None]
# Background loops beyond the S3 task worker (the job worker, the reconciler) register here.
WORKER_HOOKS: list[Callable[[ServiceContext], Stopper]] = [jobs_service.start_job_workers]
if jobs_router.mount not in ROUTER_HOOKS:
    ROUTER_HOOKS.append(jobs_router.mount)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def prepare(settings: Settings, *, wait_for_s3: float = 30.0) -> ServiceContext:
    """Migrate the database and make sure the buckets exist; stop with one clear line if either fails."""
    ctx = ServiceContext.from_settings(settings)
    try:
        migrate.upgrade(ctx.database)
    except Exception as exc:
        raise SystemExit(f"ims: the database at {ctx.database.engine.url!r} is not usable: {_one_line(exc)}") from None
    deadline = time.monotonic() + wait_for_s3
    while True:
        try:
            ctx.artifacts.ensure_buckets([settings.s3_ims_bucket, settings.s3_boot_images_bucket])
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                endpoint = settings.s3_endpoint or "(none)"
                raise SystemExit(f"ims: S3 at {endpoint} is not usable: {_one_line(exc)}") from None
            time.sleep(0.5)
    return ctx


def start_workers(ctx: ServiceContext) -> Stopper:
    worker = TaskWorker(
        ctx.queue,
        artifact_tasks.handlers(ctx),
        lease_seconds=ctx.settings.task_lease_seconds,
        poll_seconds=ctx.settings.task_poll_seconds,
        is_transient=is_transient,
    )
    ctx.on_task_queued.append(worker.wake)
    worker.start()
    stoppers = [worker.stop] + [hook(ctx) for hook in WORKER_HOOKS]

    def stop() -> None:
        for stopper in reversed(stoppers):
            stopper()

    return stop


# With several server processes the background workers run once, in the supervising process; the server
# processes wake them through this datagram socket (Linux abstract namespace) after queuing work.
_WAKE_ENV = "IMS_INTERNAL_WAKE_SOCKET"
_SUPERVISOR_ENV = "IMS_INTERNAL_SUPERVISOR_PID"


def default_workers() -> int:
    """Server processes when `--workers` is not given: one per CPU, at most 4 (reads scale with processes;
    SQLite writes do not, and every process holds its own caches)."""
    return max(1, min(os.cpu_count() or 1, 4))


def _wake_sender(address: str) -> Callable[[], None]:
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)

    def wake() -> None:
        with contextlib.suppress(OSError):  # the workers poll anyway (IMS_TASK_POLL_SECONDS)
            sender.sendto(b"w", "\0" + address)

    return wake


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


def _die_with_supervisor() -> None:
    """A server process of `ims serve --workers N` ends when its supervisor does, even by SIGKILL: it would
    otherwise keep the port and serve without the background workers that live in the supervisor."""
    supervisor = os.environ.get(_SUPERVISOR_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # it ended before the request above
        os.kill(os.getpid(), signal.SIGTERM)


def build_app(settings: Settings | None = None, *, migrate_first: bool = False) -> FastAPI:
    """The app for one server process (uvicorn calls this once per worker process)."""
    _die_with_supervisor()
    settings = settings or load_settings_or_exit()
    configure_logging(settings)
    ctx = prepare(settings) if migrate_first else ServiceContext.from_settings(settings)
    wake_address = os.environ.get(_WAKE_ENV)
    if wake_address and not settings.run_workers:
        ctx.on_task_queued.append(_wake_sender(wake_address))
    services = Services.build(ctx)
    starter = (lambda: start_workers(ctx)) if settings.run_workers else None
    app = create_app(services, start_workers=starter)
    gc.freeze()  # what start-up made lives on: later collections need not walk it again
    return app


def _http_options(settings: Settings) -> dict[str, Any]:
    """Idle keep-alive longer than clients' poll intervals and load balancers' idle timeouts (60 s): with
    uvicorn's 5 s, a client polling every 5 s reused a connection just as the server closed it."""
    return {"timeout_keep_alive": max(1, round(settings.keepalive_seconds))}


def serve(host: str, port: int, workers: int | None = None) -> None:
    workers = workers or default_workers()
    import uvicorn

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
            os.environ[_WAKE_ENV], stop_wake = _wake_listener(ctx)
        os.environ["IMS_RUN_WORKERS"] = "false"
        os.environ[_SUPERVISOR_ENV] = str(os.getpid())
        try:
            uvicorn.run("ims.cli.serve:build_app", factory=True, host=host, port=port, workers=workers,
                        log_level=settings.log_level.lower(), access_log=False, **_http_options(settings))
        finally:
            if stop_wake is not None:
                stop_wake()
            if stop_workers is not None:
                stop_workers()
            if ctx is not None:
                ctx.database.dispose()
    else:
        uvicorn.run(build_app(settings), host=host, port=port, log_level=settings.log_level.lower(),
                    access_log=False, **_http_options(settings))


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
    log.info("IMS worker running (database %s, jobs in %s)", settings.effective_database_url,
             settings.effective_jobs_dir)
    try:
        done.wait()
    finally:
        stop()
        ctx.database.dispose()

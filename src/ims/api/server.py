"""The app of one server process, built exactly as `ims serve` runs it (uvicorn calls `build_app` once per
server process; `python -m ims.api.openapi_export` renders the schema of the same app)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable

from fastapi import FastAPI

from ims.api.app import ROUTER_HOOKS, create_app
from ims.api.deps import Services
from ims.api.routers import jobs as jobs_router
from ims.services.context import ServiceContext
from ims.services.startup import configure_logging, prepare, start_workers
from ims.settings import Settings, load_settings_or_exit

if jobs_router.mount not in ROUTER_HOOKS:
    ROUTER_HOOKS.append(jobs_router.mount)

# With several server processes the background workers run once, in the supervising process; the server
# processes wake them through this datagram socket (Linux abstract namespace) after queuing work.
WAKE_ENV = "IMS_INTERNAL_WAKE_SOCKET"
SUPERVISOR_ENV = "IMS_INTERNAL_SUPERVISOR_PID"


def _wake_sender(address: str) -> Callable[[], None]:
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)

    def wake() -> None:
        with contextlib.suppress(OSError):  # the workers poll anyway (IMS_TASK_POLL_SECONDS)
            sender.sendto(b"w", "\0" + address)

    return wake


def _die_with_supervisor() -> None:
    """A server process of `ims serve --workers N` ends when its supervisor does, even by SIGKILL: it would
    otherwise keep the port and serve without the background workers that live in the supervisor."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
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
    wake_address = os.environ.get(WAKE_ENV)
    if wake_address and not settings.run_workers:
        ctx.on_task_queued.append(_wake_sender(wake_address))
    services = Services.build(ctx)
    starter = (lambda: start_workers(ctx)) if settings.run_workers else None
    app = create_app(services, start_workers=starter)
    gc.freeze()  # what start-up made lives on: later collections need not walk it again
    return app

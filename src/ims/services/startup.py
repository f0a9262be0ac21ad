"""Starting a server-side process: logging, the database schema and buckets, the background workers."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from ims.artifacts.s3 import is_transient
from ims.services import artifact_tasks
from ims.services import jobs as jobs_service
from ims.services.context import ServiceContext
from ims.settings import Settings
from ims.store import migrate
from ims.tasks.worker import TaskWorker

Stopper = Callable[[], None]
# Background loops beyond the S3 task worker (the job worker, the reconciler) register here.
WORKER_HOOKS: list[Callable[[ServiceContext], Stopper]] = [jobs_service.start_job_workers]


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

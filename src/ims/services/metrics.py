"""What `GET /metrics` reports, read from below the API: S3 errors as they happen, queue and job counts."""

from __future__ import annotations

from collections.abc import Callable

from ims.artifacts import s3
from ims.services.context import ServiceContext
from ims.store import counts, group_commit
from ims.store.counts import QueueAndJobCounts

__all__ = ["QueueAndJobCounts", "on_database_commit", "on_s3_error", "queue_and_job_counts"]


def on_s3_error(hook: Callable[[str, str], None]) -> None:
    """Call `hook(operation, kind)` for every failed S3 call of this process."""
    s3.ERROR_HOOKS.append(hook)


def on_database_commit(hook: Callable[[int], None]) -> None:
    """Call `hook(writes)` after every SQLite commit of this process with the number of writes it held."""
    group_commit.COMMIT_HOOKS.append(hook)


def queue_and_job_counts(ctx: ServiceContext) -> QueueAndJobCounts:
    """The task queue by state, its oldest unfinished task, and jobs (not deleted) by status, read now."""
    return counts.queue_and_job_counts(ctx.database)

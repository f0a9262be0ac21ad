"""Counts for monitoring: the task queue by state, its oldest unfinished task, active jobs by status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from ims.store.db import Database
from ims.store.tables import jobs, tasks


@dataclass(frozen=True)
class QueueAndJobCounts:
    task_states: dict[str, int]
    oldest_unfinished_task: datetime | None
    job_states: dict[str, int]


def queue_and_job_counts(database: Database) -> QueueAndJobCounts:
    with database.read() as conn:
        task_states = {str(k): int(v) for k, v in conn.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state))}
        oldest = conn.execute(
            select(func.min(tasks.c.created)).where(tasks.c.state.in_(("pending", "running")))
        ).scalar()
        job_states = {
            str(k): int(v)
            for k, v in conn.execute(
                select(jobs.c.status, func.count()).where(jobs.c.deleted.is_(None)).group_by(jobs.c.status)
            )
        }
    return QueueAndJobCounts(task_states, oldest, job_states)

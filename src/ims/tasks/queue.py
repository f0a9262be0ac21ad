"""The task queue. Tasks on one resource run one at a time, oldest first; a lapsed lease frees a task."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from ims.domain.timeutil import utcnow
from ims.store.db import Database
from ims.store.tables import tasks

MAX_ATTEMPTS = 5
MAX_RETRY_SECONDS = 60.0
_UNFINISHED = ("pending", "running")


@dataclass(frozen=True)
class Task:
    id: int
    kind: str
    resource: str
    payload: dict[str, Any]
    attempts: int


def enqueue(conn: Connection, kind: str, resource: str, payload: dict[str, Any]) -> int:
    """Queue a task inside the caller's transaction, so the record change and its task commit together."""
    now = utcnow()
    result = conn.execute(
        insert(tasks).values(
            kind=kind, resource=resource, payload=payload, state="pending", attempts=0, created=now, updated=now
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def has_unfinished(conn: Connection, resource: str) -> bool:
    query = select(tasks.c.id).where(tasks.c.resource == resource, tasks.c.state.in_(_UNFINISHED)).limit(1)
    return conn.execute(query).first() is not None


class TaskQueue:
    def __init__(self, database: Database) -> None:
        self.database = database

    def _claimable(self) -> ColumnElement[bool]:
        now = utcnow()
        earlier = tasks.alias("earlier")
        blocked = exists().where(
            earlier.c.resource == tasks.c.resource,
            earlier.c.id < tasks.c.id,
            earlier.c.state.in_(_UNFINISHED),
        )
        ready = or_(tasks.c.state == "pending", and_(tasks.c.state == "running", tasks.c.lease_until < now))
        return and_(ready, ~blocked)

    def claim(self, owner: str, lease_seconds: float) -> Task | None:
        with self.database.write() as conn:
            rows = conn.execute(select(tasks).where(self._claimable()).order_by(tasks.c.id).limit(10)).all()
            for row in rows:
                now = utcnow()
                taken = conn.execute(
                    update(tasks)
                    .where(tasks.c.id == row.id, self._claimable())
                    .values(
                        state="running",
                        lease_owner=owner,
                        lease_until=now + timedelta(seconds=lease_seconds),
                        attempts=tasks.c.attempts + 1,
                        updated=now,
                    )
                )
                if taken.rowcount == 1:
                    return Task(row.id, row.kind, row.resource, dict(row.payload), row.attempts + 1)
        return None

    def extend(self, task_id: int, owner: str, lease_seconds: float) -> bool:
        with self.database.write() as conn:
            now = utcnow()
            result = conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.lease_owner == owner, tasks.c.state == "running")
                .values(lease_until=now + timedelta(seconds=lease_seconds), updated=now)
            )
            return result.rowcount == 1

    def complete(self, task_id: int, owner: str) -> None:
        with self.database.write() as conn:
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.lease_owner == owner)
                .values(state="done", lease_until=None, updated=utcnow(), last_error=None)
            )

    def fail(
        self, task_id: int, owner: str, error: str, attempts: int, retry_in: float = 2.0, *, transient: bool = False
    ) -> None:
        """Give a failed task back for a later retry, or mark it failed after MAX_ATTEMPTS. A transient
        failure (S3 unreachable, timing out, 5xx) is retried for as long as it lasts, with a backoff that
        grows to a minute: the work is still to be done, and giving up would leave orphans."""
        with self.database.write() as conn:
            now = utcnow()
            final = attempts >= MAX_ATTEMPTS and not transient
            delay = min(MAX_RETRY_SECONDS, retry_in * attempts)
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.lease_owner == owner)
                .values(
                    state="failed" if final else "running",
                    # A retry waits out a short lease with no owner renewing it.
                    lease_until=None if final else now + timedelta(seconds=delay),
                    lease_owner=None if final else "retry",
                    updated=now,
                    last_error=error[:4000],
                )
            )

    def pending_count(self) -> int:
        with self.database.read() as conn:
            return len(conn.execute(select(tasks.c.id).where(tasks.c.state.in_(_UNFINISHED))).all())

    def depth_and_oldest(self) -> tuple[int, float]:
        """Unfinished tasks, and the age in seconds of the oldest one (0 when there is none)."""
        with self.database.read() as conn:
            rows = conn.execute(select(tasks.c.created).where(tasks.c.state.in_(_UNFINISHED))).all()
        if not rows:
            return 0, 0.0
        oldest = min(row.created for row in rows)
        return len(rows), max(0.0, (utcnow() - oldest).total_seconds())

    def summary(self) -> dict[str, int]:
        with self.database.read() as conn:
            counts: dict[str, int] = {}
            for row in conn.execute(select(tasks.c.state)):
                counts[row.state] = counts.get(row.state, 0) + 1
            return counts

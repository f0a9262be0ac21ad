"""The orchestration side of the jobs table: phases, owners and their leases, runner handles.

A job row moves `queued` -> `starting` (a worker claimed it) -> `running` (its process was launched) ->
`done` (the process ended and its directory was cleaned). The `owner` renews `lease_until` while it
watches the process; a row whose lease lapsed is taken over by another worker (ims.jobs.reconciler).
A DELETE of a running job only sets `deleted`; the owner stops the process and removes the row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select, update

from ims.domain.jobs import FINAL_STATUSES
from ims.domain.timeutil import utcnow
from ims.jobs.runner import RunnerHandle
from ims.store import job_tokens, repository
from ims.store.db import Database
from ims.store.tables import jobs as table

QUEUED = "queued"
STARTING = "starting"
RUNNING = "running"
DONE = "done"
ACTIVE_PHASES = (STARTING, RUNNING)


@dataclass(frozen=True)
class JobRow:
    id: str
    status: str
    phase: str
    owner: str | None
    lease_until: datetime | None
    status_changed: datetime | None
    deleted: bool
    ssh_port: int | None
    runner: RunnerHandle | None
    launch: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def _row(row: Any) -> JobRow:
    return JobRow(
        id=row.id,
        status=row.status,
        phase=row.phase,
        owner=row.owner,
        lease_until=row.lease_until,
        status_changed=row.status_changed,
        deleted=row.deleted is not None,
        ssh_port=row.ssh_port,
        runner=RunnerHandle.from_json(row.runner) if row.runner else None,
        launch=dict(row.launch or {}),
    )


_COLUMNS = (
    table.c.id,
    table.c.status,
    table.c.phase,
    table.c.owner,
    table.c.lease_until,
    table.c.status_changed,
    table.c.deleted,
    table.c.ssh_port,
    table.c.runner,
    table.c.launch,
)


def load(conn: Connection, job_id: str, *, lock: bool = False) -> JobRow | None:
    query = select(*_COLUMNS).where(table.c.id == job_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _row(row) if row is not None else None


def rows(conn: Connection, *where: Any) -> list[JobRow]:
    query = select(*_COLUMNS).order_by(table.c.created, table.c.id)
    for clause in where:
        query = query.where(clause)
    return [_row(row) for row in conn.execute(query)]


def lock_record(conn: Connection, job_id: str, *, deleted: bool = False) -> dict[str, Any] | None:
    """The wire record, with the row locked for the rest of the transaction (PostgreSQL; SQLite locks it all)."""
    conn.execute(select(table.c.id).where(table.c.id == job_id).with_for_update())
    return repository.jobs.get(conn, job_id, deleted=deleted)


def apply_status(conn: Connection, record: dict[str, Any], status: str, reason: str | None) -> None:
    """Set status and reason on a locked record and save it; the time of a change is kept for the reconciler."""
    changed = record.get("status") != status
    record["status"] = status
    record["status_reason"] = reason
    repository.jobs.save(conn, record)
    if changed:
        conn.execute(update(table).where(table.c.id == record["id"]).values(status_changed=utcnow()))
    if status in FINAL_STATUSES:
        job_tokens.revoke(conn, str(record["id"]))  # the job's token ends with the job, whoever ended it


def fail(database: Database, job_id: str, reason: str) -> bool:
    """Move an unfinished job to `error` with a reason; False when it had already ended or is gone."""
    with database.write() as conn:
        record = lock_record(conn, job_id)
        if record is None or record.get("status") in FINAL_STATUSES:
            return False
        apply_status(conn, record, "error", reason)
        return True


# --- the owning worker
def claim_queued(database: Database, owner: str, lease_seconds: float, limit: int) -> list[JobRow]:
    claimed: list[JobRow] = []
    query = (
        select(table.c.id)
        .where(table.c.phase == QUEUED, table.c.owner.is_(None), table.c.deleted.is_(None))
        .order_by(table.c.created, table.c.id)
        .limit(limit)
    )
    # Workers poll often: look first, so an idle poll never takes SQLite's write lock.
    with database.read() as conn:
        if conn.execute(query).first() is None:
            return claimed
    with database.write() as conn:
        candidates = conn.execute(query).all()
        for candidate in candidates:
            now = utcnow()
            taken = conn.execute(
                update(table)
                .where(table.c.id == candidate.id, table.c.phase == QUEUED, table.c.owner.is_(None))
                .values(phase=STARTING, owner=owner, lease_until=now + timedelta(seconds=lease_seconds), heartbeat=now)
            )
            if taken.rowcount == 1:
                row = load(conn, candidate.id)
                if row is not None:
                    claimed.append(row)
    return claimed


def record_launch(database: Database, job_id: str, owner: str, handle: RunnerHandle) -> None:
    with database.write() as conn:
        conn.execute(
            update(table)
            .where(table.c.id == job_id, table.c.owner == owner)
            .values(phase=RUNNING, runner=handle.to_json(), heartbeat=utcnow())
        )


def renew(database: Database, owner: str, lease_seconds: float) -> int:
    now = utcnow()
    with database.write() as conn:
        result = conn.execute(
            update(table)
            .where(table.c.owner == owner, table.c.phase.in_(ACTIVE_PHASES))
            .values(lease_until=now + timedelta(seconds=lease_seconds), heartbeat=now)
        )
        return int(result.rowcount)


def owned(database: Database, owner: str) -> list[JobRow]:
    with database.read() as conn:
        return rows(conn, table.c.owner == owner, table.c.phase.in_(ACTIVE_PHASES))


def finish(database: Database, job_id: str, owner: str | None) -> None:
    """The job's process is gone and its directory cleaned: nobody needs to watch it any more."""
    with database.write() as conn:
        clause = table.c.owner.is_(None) if owner is None else table.c.owner == owner
        conn.execute(update(table).where(table.c.id == job_id, clause).values(phase=DONE, owner=None, lease_until=None))


def remove(database: Database, job_id: str) -> None:
    with database.write() as conn:
        conn.execute(delete(table).where(table.c.id == job_id))


# --- the reconciler
def unwatched(database: Database, owner: str) -> list[JobRow]:
    """Active jobs some other worker owns (the reconciler then checks whether that owner still lives)."""
    with database.read() as conn:
        return rows(conn, table.c.phase.in_(ACTIVE_PHASES), or_(table.c.owner.is_(None), table.c.owner != owner))


def take_over(database: Database, job_id: str, old_owner: str | None, owner: str, lease_seconds: float) -> bool:
    now = utcnow()
    with database.write() as conn:
        clause = table.c.owner.is_(None) if old_owner is None else table.c.owner == old_owner
        result = conn.execute(
            update(table)
            .where(table.c.id == job_id, clause, table.c.phase.in_(ACTIVE_PHASES))
            .values(owner=owner, lease_until=now + timedelta(seconds=lease_seconds), heartbeat=now)
        )
        return result.rowcount == 1


def waiting_since(database: Database, status: str, before: datetime) -> list[JobRow]:
    with database.read() as conn:
        return rows(
            conn,
            table.c.status == status,
            table.c.status_changed < before,
            table.c.deleted.is_(None),
        )


def leftover_tombstones(database: Database) -> list[JobRow]:
    """Deleted jobs no worker watches: queued ones, finished ones (their directories may remain)."""
    with database.read() as conn:
        return rows(conn, table.c.deleted.is_not(None), or_(table.c.owner.is_(None), table.c.phase.in_((QUEUED, DONE))))


# --- the API side
def used_ssh_ports(conn: Connection) -> set[int]:
    query = select(table.c.ssh_port).where(table.c.ssh_port.is_not(None), table.c.phase != DONE)
    return {int(row.ssh_port) for row in conn.execute(query)}


def tombstone(conn: Connection, job_ids: Iterable[str]) -> None:
    ids = list(job_ids)
    if ids:
        conn.execute(update(table).where(and_(table.c.id.in_(ids), table.c.deleted.is_(None))).values(deleted=utcnow()))

"""Repositories: rows in, wire-shaped record dicts out. No rules here, only storage."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, Table, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine.processors import str_to_datetime

from ims.domain.timeutil import format_timestamp, parse_timestamp
from ims.store import tables

_COLUMNS = ("id", "created", "deleted", "data")


def sqlite_driver(conn: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection under a SQLite transaction: statements on it skip SQLAlchemy's per-statement work,
    most of a small write's cost. None on any other database."""
    if conn.dialect.name != "sqlite":
        return None
    driver: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return driver


class RecordRepository:
    """Active and soft-deleted records of one kind live in one table, told apart by `deleted`."""

    def __init__(self, table: Table, key: str = "id") -> None:
        self.table = table
        self.key = key
        self.extra_columns = [c.name for c in table.columns if c.name not in _COLUMNS]
        self._raw_get_sql: dict[bool, str] | None = None
        self._raw_fetch_sql: dict[bool, str] | None = None
        self._raw_compiled: dict[tuple[str, tuple[str, ...]], tuple[Any, str, dict[str, Any]]] = {}

    # --- mapping
    def to_record(self, row: Any) -> dict[str, Any]:
        """A row of (id, created, deleted, data), in that order, as its wire-shaped record."""
        # Positional unpacking and no copy of the freshly parsed `data`: this runs once per row of a list.
        record_id, created, deleted, data = row[0], row[1], row[2], row[3]
        record: dict[str, Any] = data
        record[self.key] = record_id
        record["created"] = format_timestamp(created)
        if deleted is not None:
            record["deleted"] = format_timestamp(deleted)
        return record

    def _values(self, record: dict[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in record.items() if k not in (self.key, "created", "deleted")}
        deleted = record.get("deleted")
        values: dict[str, Any] = {
            "id": record[self.key],
            "created": parse_timestamp(record["created"]),
            "deleted": parse_timestamp(deleted) if deleted else None,
            "data": data,
        }
        if "link_path" in self.extra_columns:
            link = record.get("link")
            values["link_path"] = link.get("path") if isinstance(link, dict) else None
        if "status" in self.extra_columns:
            values["status"] = record.get("status", "creating")
        if "job_type" in self.extra_columns:
            values["job_type"] = record.get("job_type", "")
        return values

    # --- queries
    def get(
        self, conn: Connection, record_id: str, *, deleted: bool = False, for_update: bool = False
    ) -> dict[str, Any] | None:
        """`for_update` locks the row until the transaction ends: a read-modify-write must use it, or on
        PostgreSQL a concurrent writer's change is silently overwritten."""
        raw = sqlite_driver(conn)
        if raw is not None:  # SQLite's writer holds the whole database already: nothing to lock
            return self.raw_get(raw, record_id, deleted=deleted)
        query = self._select(deleted).where(self.table.c.id == record_id)
        row = conn.execute(query.with_for_update() if for_update else query).first()
        return self.to_record(row) if row is not None else None

    def raw_get(self, raw: sqlite3.Connection, record_id: str, *, deleted: bool = False) -> dict[str, Any] | None:
        """SQLite only: what get() returns, read on a plain sqlite3 connection and decoded by the same functions
        SQLAlchemy uses (orjson for `data`, its own timestamp parser), in tens of microseconds."""
        if self._raw_get_sql is None:
            dialect = sqlite_dialect()
            self._raw_get_sql = {
                flag: str(self._select(flag).where(self.table.c.id == bindparam("id")).compile(dialect=dialect))
                for flag in (False, True)
            }
        row = raw.execute(self._raw_get_sql[deleted], (record_id,)).fetchone()
        if row is None:
            return None
        removed = str_to_datetime(row[2]) if row[2] is not None else None
        return self.to_record((row[0], str_to_datetime(row[1]), removed, orjson.loads(row[3])))

    def raw_fetch(self, raw: sqlite3.Connection, *, deleted: bool = False) -> list[dict[str, Any]]:
        """SQLite only: what fetch() returns without paging or filters, read on a plain sqlite3 connection (no
        SQLAlchemy row objects; the same decoding as raw_get)."""
        if self._raw_fetch_sql is None:
            dialect = sqlite_dialect()
            order = (self.table.c.created, self.table.c.id)
            self._raw_fetch_sql = {
                flag: str(self._select(flag).order_by(*order).compile(dialect=dialect)) for flag in (False, True)
            }
        to_record, loads = self.to_record, orjson.loads
        return [
            to_record(
                (
                    row[0],
                    str_to_datetime(row[1]),
                    str_to_datetime(row[2]) if row[2] is not None else None,
                    loads(row[3]),
                )
            )
            for row in raw.execute(self._raw_fetch_sql[deleted])
        ]

    def get_any(self, conn: Connection, record_id: str) -> dict[str, Any] | None:
        columns = [self.table.c[name] for name in _COLUMNS]
        row = conn.execute(select(*columns).where(self.table.c.id == record_id)).first()
        return self.to_record(row) if row is not None else None

    def fetch(
        self,
        conn: Connection,
        *,
        deleted: bool = False,
        limit: int | None = None,
        offset: int = 0,
        where: Iterable[Any] = (),
        for_update: bool = False,
    ) -> list[dict[str, Any]]:
        query = self._select(deleted)
        for clause in where:
            query = query.where(clause)
        query = query.order_by(self.table.c.created, self.table.c.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        if for_update:
            query = query.with_for_update()
        return [self.to_record(row) for row in conn.execute(query)]

    def count(self, conn: Connection, *, deleted: bool = False) -> int:
        column = self.table.c.deleted
        condition = column.is_not(None) if deleted else column.is_(None)
        return int(conn.execute(select(func.count()).select_from(self.table).where(condition)).scalar_one())

    def ids(self, conn: Connection, *, deleted: bool = False, where: Iterable[Any] = ()) -> list[str]:
        column = self.table.c.deleted
        query = select(self.table.c.id).where(column.is_not(None) if deleted else column.is_(None))
        for clause in where:
            query = query.where(clause)
        return [row.id for row in conn.execute(query.order_by(self.table.c.created, self.table.c.id))]

    def find_link_user(self, conn: Connection, path: str, exclude_id: str | None = None) -> str | None:
        """The id of an active record whose link has this path.

        On PostgreSQL this also locks the path until the transaction ends, so two transactions that check then
        claim one path queue up instead of both finding it free (SQLite serializes its writers already)."""
        if conn.dialect.name == "postgresql":
            key = f"{self.table.name}:{path}"
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
        query = select(self.table.c.id).where(self.table.c.link_path == path, self.table.c.deleted.is_(None))
        if exclude_id is not None:
            query = query.where(self.table.c.id != exclude_id)
        row = conn.execute(query.limit(1)).first()
        return row.id if row is not None else None

    def restore_link(self, conn: Connection, record_id: str) -> dict[str, Any] | None:
        row = conn.execute(select(self.table.c.restore_link).where(self.table.c.id == record_id)).first()
        return row.restore_link if row is not None else None

    # --- changes
    def insert(self, conn: Connection, record: dict[str, Any], **extra: Any) -> None:
        values = self._values(record)
        values.update(extra)
        raw = sqlite_driver(conn)
        if raw is None:
            conn.execute(insert(self.table).values(**values))
            return
        raw.execute(*self._raw_statement(conn, "insert", lambda: insert(self.table), values))

    def save(self, conn: Connection, record: dict[str, Any], **extra: Any) -> None:
        """Write back a whole record (its `deleted` member decides whether it is active)."""
        values = self._values(record)
        values.update(extra)
        raw = sqlite_driver(conn)
        if raw is None:
            conn.execute(update(self.table).where(self.table.c.id == record[self.key]).values(**values))
            return
        changes = {name: value for name, value in values.items() if name != "id"}
        changes["record_id"] = record[self.key]
        statement = lambda: update(self.table).where(self.table.c.id == bindparam("record_id"))  # noqa: E731
        raw.execute(*self._raw_statement(conn, "update", statement, changes))

    def _raw_statement(
        self, conn: Connection, kind: str, statement: Callable[[], Any], values: dict[str, Any]
    ) -> tuple[str, list[Any]]:
        """A statement's SQLite text and positional parameters, bound as SQLAlchemy binds them (its DATETIME
        text, the engine's JSON encoder). Built and compiled once per table, kind of statement and set of
        columns (building the statement object alone costs more than the INSERT)."""
        key = (kind, tuple(values))
        cached = self._raw_compiled.get(key)
        if cached is None:
            compiled = statement().compile(dialect=conn.dialect, column_keys=list(values))
            # Columns the INSERT fills from their scalar Python default (`phase` of jobs).
            cached = self._raw_compiled[key] = (
                compiled,
                str(compiled),
                {column.key: column.default.arg for column in compiled.insert_prefetch},
            )
        compiled, text, defaults = cached
        processors = compiled._bind_processors
        params = []
        for name in compiled.positiontup or ():
            value = values[name] if name in values else defaults[name]
            process = processors.get(name)
            params.append(process(value) if process is not None and value is not None else value)
        return text, params

    def set_columns(self, conn: Connection, record_id: str, **values: Any) -> None:
        conn.execute(update(self.table).where(self.table.c.id == record_id).values(**values))

    def remove(self, conn: Connection, record_id: str) -> None:
        conn.execute(delete(self.table).where(self.table.c.id == record_id))

    def _select(self, deleted: bool) -> Any:
        column = self.table.c.deleted
        return select(*[self.table.c[name] for name in _COLUMNS]).where(
            column.is_not(None) if deleted else column.is_(None)
        )


public_keys = RecordRepository(tables.public_keys)
recipes = RecordRepository(tables.recipes)
images = RecordRepository(tables.images)
jobs = RecordRepository(tables.jobs)
remote_build_nodes = RecordRepository(tables.remote_build_nodes, key="xname")

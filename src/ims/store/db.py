"""Engine and transactions. Every request is one transaction; writers on SQLite take the lock up front and share
commits (ims.store.group_commit)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from ims.domain.errors import Unavailable
from ims.store.group_commit import WRITE_OPTION, SqliteWriter


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# orjson parses a record's `data` several times faster than the json module: it dominates long lists.
_JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=pool_size, **_JSON_CODEC
            )
            self._install_sqlite_hooks()
        else:
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True, **_JSON_CODEC)
        # SQLite only: the queue of this process's writers and their shared commits.
        self.sqlite_writer: SqliteWriter | None = None
        if self.is_sqlite:
            path = parsed.database if parsed.database and parsed.database != ":memory:" else None
            self.sqlite_writer = SqliteWriter(self.engine, Path(f"{path}.writer-lock") if path else None)

    def _install_sqlite_hooks(self) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let us emit BEGIN ourselves so writers can use BEGIN IMMEDIATE (no upgrade deadlocks).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed when the block ends without an exception: when the block is left,
        its changes are durable. On SQLite the blocks of concurrent writers share one commit (see SqliteWriter)."""
        if self.sqlite_writer is not None:
            with self.sqlite_writer.write() as conn:
                yield conn
            return
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise Unavailable(f"The database is not available: {exc.orig}") from exc

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once what this thread's open write block wrote is durable; at once when it is in no
        write block. A use case tells others of its change after its transaction, but when it runs as one
        block of a shared transaction (ims.store.loop_writes) that is still open then."""
        if self.sqlite_writer is None or not self.sqlite_writer.after_commit(callback):
            callback()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise Unavailable(f"The database is not available: {exc.orig}") from exc

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()
        if self.sqlite_writer is not None:
            self.sqlite_writer.close()

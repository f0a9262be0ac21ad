"""Engine and transactions. Every request is one transaction; writers on SQLite take the lock up front."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from ims.domain.errors import Unavailable

_WRITE = "ims_write"


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
        # SQLite writers of this process queue here rather than in SQLite's busy handler, which polls with
        # sleeps of up to 100 ms: under load that idles the database and gives writers second-long tails.
        self._writer = threading.RLock()
        self._writer_timeout = 60.0
        # Writers of other processes on the same file (`ims serve` runs one process per CPU) queue on a lock
        # file beside the database, held from BEGIN IMMEDIATE to COMMIT, for the same reason.
        self._writer_file: int | None = None
        self._writer_depth = 0
        self._writer_file_path: Path | None = None
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            self._writer_file_path = Path(f"{parsed.database}.writer-lock")

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
            immediate = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed when the block ends without an exception."""
        if self.is_sqlite and not self._writer.acquire(timeout=self._writer_timeout):
            raise Unavailable("The database is not available: too many writers are waiting.")
        try:
            self._lock_writer_file()
            with self.engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise Unavailable(f"The database is not available: {exc.orig}") from exc
        finally:
            if self.is_sqlite:
                self._unlock_writer_file()
                self._writer.release()

    def _lock_writer_file(self) -> None:
        """Called with self._writer held. Polls every millisecond (one waiting thread per process) rather than
        blocking, so a process that hangs with the lock gives the others a 503 after the timeout, as before."""
        self._writer_depth += 1
        if self._writer_file_path is None or self._writer_depth > 1:
            return
        if self._writer_file is None:
            self._writer_file = os.open(self._writer_file_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self._writer_timeout
        while True:
            try:
                fcntl.flock(self._writer_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._writer_depth -= 1
                    raise Unavailable("The database is not available: another process holds the write lock.") from None
                time.sleep(0.001)

    def _unlock_writer_file(self) -> None:
        if self._writer_depth == 0:
            return
        self._writer_depth -= 1
        if self._writer_depth == 0 and self._writer_file is not None:
            fcntl.flock(self._writer_file, fcntl.LOCK_UN)

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
        if self._writer_file is not None and self._writer_depth == 0:
            os.close(self._writer_file)
            self._writer_file = None

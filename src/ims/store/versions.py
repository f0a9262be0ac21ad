"""Collection versions (table `collection_versions`, bumped by triggers of migration 0004), read cheaply.

A reader asks for the version before it reads the records. A cache entry filled after that question can only
hold records at least as new as the version it is filed under, never older, so an entry found under the
version the database shows now is exactly the database's state: right across processes and replicas.

The question must reach the database after the request arrived: then every write acknowledged before it, by
any process or replica, is in the answer. On SQLite it is a plain sqlite3 SELECT (microseconds). On PostgreSQL
it is one prepared SELECT on an autocommit psycopg connection owned by the process's event loop (no thread,
no SQLAlchemy): requests that arrive while a question is on the wire wait for the next one, sent after they
all arrived, and share its answer (every collection's version in one row set). Answers are never reused for a
request that arrived after the question was sent.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from ims.domain.errors import Unavailable
from ims.store.db import Database

_QUERY = "SELECT version FROM collection_versions WHERE name = ?"
_ALL_QUERY = "SELECT name, version FROM collection_versions"
# A version read never waits for a lock (MVCC); what can leave it unanswered is a dead peer (a host or replica
# gone without a reset). The kernel notices within about 10 s (unacknowledged data, keepalive probes) and the
# request answers 503 instead of hanging. A timer per question (asyncio.timeout) would cost about a fifth of a read.
_DEAD_PEER = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
_LIBPQ_DRIVERS = ("psycopg", "psycopg2")


def _unavailable(exc: BaseException) -> Unavailable:
    # psycopg's messages name host and port, never the password.
    reason = getattr(exc, "orig", None) or exc
    return Unavailable(f"The database is not available: {str(reason).strip() or type(reason).__name__}")


def libpq_conninfo(url: str) -> str | None:
    """The libpq connection string of a SQLAlchemy URL of PostgreSQL through a libpq driver, built from the
    arguments SQLAlchemy's own dialect would connect with (host, port, user, password, dbname, and the URL's
    query: sslmode, host=/socket/dir, several hosts); None for any other database or driver."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.get_driver_name() not in _LIBPQ_DRIVERS:
        return None
    _, params = parsed.get_dialect()().create_connect_args(parsed)
    return make_conninfo("", **{key: value for key, value in params.items() if value is not None})


class LoopVersions:
    """PostgreSQL: the versions read on the running event loop over one autocommit connection, opened on first
    use and again after it failed; every read is a fresh question to the database (see the module docstring).

    A request that finds nobody asking asks itself (no task, no hand-off: the cheapest path when requests come
    one at a time); those that arrive meanwhile are answered together by one task that asks again as soon as
    the question before is answered. One connection is enough: its round trip is shared by all of them."""

    def __init__(self, conninfo: str) -> None:
        # The URL's own settings win over these defaults.
        self._conninfo = make_conninfo("", **{**_DEAD_PEER, **conninfo_to_dict(conninfo)})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._cursor: psycopg.AsyncCursor[Any] | None = None
        self._asking = False
        self._waiting: list[asyncio.Future[dict[str, int]]] = []
        self._task: asyncio.Task[None] | None = None  # the loop keeps only a weak reference

    async def read(self, collection: str) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        if self._asking:
            # A future per request: a client that goes away cancels only its own.
            answer: asyncio.Future[dict[str, int]] = loop.create_future()
            self._waiting.append(answer)
            return (await answer).get(collection, 0)
        self._asking = True
        try:
            versions = await self._query()
        finally:
            self._asking = False
            if self._waiting:
                self._asking = True
                self._task = loop.create_task(self._answer_waiting())
        return versions.get(collection, 0)

    async def _answer_waiting(self) -> None:
        waiting: list[asyncio.Future[dict[str, int]]] = []
        try:
            while self._waiting:
                # Taken before the question is sent: each of these requests arrived before it.
                waiting, self._waiting = self._waiting, []
                try:
                    versions = await self._query()
                except Unavailable as exc:
                    for answer in waiting:
                        if not answer.done():
                            answer.set_exception(Unavailable(exc.detail))
                    continue
                for answer in waiting:
                    if not answer.done():
                        answer.set_result(versions)
        finally:
            # Only when the loop cancels this task (shutdown): nobody may wait for an answer that never comes.
            for answer in (*waiting, *self._waiting):
                if not answer.done():
                    answer.cancel()
            self._asking, self._waiting, self._task = False, [], None

    async def _query(self) -> dict[str, int]:
        fresh = self._cursor is None
        try:
            try:
                return await self._select()
            except psycopg.OperationalError:
                if fresh:
                    raise
            # The connection died since the last read (a restarted server, an idle timeout): one new try rather
            # than a 503 while the database is back.
            self._discard()
            return await self._select()
        except (psycopg.Error, OSError) as exc:
            self._discard()
            raise _unavailable(exc) from None
        except asyncio.CancelledError:
            self._discard()  # interrupted mid-question: what the connection holds now is unknown
            raise

    async def _select(self) -> dict[str, int]:
        cursor = self._cursor
        if cursor is None:
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            cursor = self._cursor = self._conn.cursor()
        await cursor.execute(_ALL_QUERY, prepare=True)
        return dict(await cursor.fetchall())

    def _discard(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            # Synchronous: the connection may belong to a loop that is gone, or be mid-question.
            conn.pgconn.finish()

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """A connection serves the loop that opened it; another loop (a new TestClient) starts afresh."""
        self._discard()
        self._loop, self._asking, self._waiting, self._task = loop, False, [], None

    async def aclose(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            if self._loop is asyncio.get_running_loop():
                await conn.close()
            else:
                conn.pgconn.finish()


class VersionReader:
    """On SQLite one plain sqlite3 connection per thread in autocommit mode (each SELECT sees the newest commit,
    some microseconds); on PostgreSQL through a libpq driver `on_loop` reads on the event loop (LoopVersions),
    else a pooled connection."""

    def __init__(self, database: Database) -> None:
        self.database = database
        parsed = make_url(database.url)
        path = parsed.database if database.is_sqlite else None
        self._sqlite_path = path if path and path != ":memory:" and not path.startswith("file:") else None
        self._local = threading.local()
        conninfo = None if database.is_sqlite else libpq_conninfo(database.url)
        self.on_loop: LoopVersions | None = LoopVersions(conninfo) if conninfo is not None else None

    @property
    def fast(self) -> bool:
        """True when a read takes microseconds and may run on the event loop."""
        return self._sqlite_path is not None

    def read(self, collection: str) -> int:
        if self._sqlite_path is None:
            try:
                with self.database.engine.connect() as conn:
                    value: Any = conn.execute(
                        text("SELECT version FROM collection_versions WHERE name = :name"), {"name": collection}
                    ).scalar()
                    conn.rollback()
            except OperationalError as exc:
                raise _unavailable(exc) from exc
            return int(value or 0)
        row = self.raw().execute(_QUERY, (collection,)).fetchone()
        return int(row[0]) if row is not None else 0

    async def aclose(self) -> None:
        """Close the event loop's connection (the app's shutdown)."""
        if self.on_loop is not None:
            await self.on_loop.aclose()

    def raw(self) -> sqlite3.Connection:
        """SQLite only: this thread's plain connection in autocommit mode (each statement sees the newest commit)."""
        if self._sqlite_path is None:
            raise RuntimeError("raw connections exist only for a SQLite file")
        raw: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if raw is None:
            raw = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False, timeout=60)
            raw.execute("PRAGMA busy_timeout=60000")
            raw.execute("PRAGMA query_only=ON")
            self._local.conn = raw
        return raw

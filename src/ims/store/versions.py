"""Collection versions (table `collection_versions`, bumped by triggers of migration 0004), read cheaply.

A reader asks for the version before it reads the records. A cache entry filled after that question can only
hold records at least as new as the version it is filed under, never older, so an entry found under the
version the database shows now is exactly the database's state: right across processes and replicas.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from ims.store.db import Database

_QUERY = "SELECT version FROM collection_versions WHERE name = ?"


class VersionReader:
    """On SQLite one plain sqlite3 connection per thread in autocommit mode (each SELECT sees the newest commit,
    some microseconds); on PostgreSQL a pooled connection."""

    def __init__(self, database: Database) -> None:
        self.database = database
        parsed = make_url(database.url)
        path = parsed.database if database.is_sqlite else None
        self._sqlite_path = path if path and path != ":memory:" and not path.startswith("file:") else None
        self._local = threading.local()

    @property
    def fast(self) -> bool:
        """True when a read takes microseconds and may run on the event loop."""
        return self._sqlite_path is not None

    def read(self, collection: str) -> int:
        if self._sqlite_path is None:
            with self.database.engine.connect() as conn:
                value: Any = conn.execute(
                    text("SELECT version FROM collection_versions WHERE name = :name"), {"name": collection}
                ).scalar()
                conn.rollback()
            return int(value or 0)
        row = self.raw().execute(_QUERY, (collection,)).fetchone()
        return int(row[0]) if row is not None else 0

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

"""Alembic migrations, run programmatically; replicas on PostgreSQL serialize on an advisory lock."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from ims.store.db import Database
from ims.store.group_commit import WRITE_OPTION

_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x494D53  # "IMS"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@contextmanager
def _sqlite_migration_lock(database: Database) -> Iterator[None]:
    # alembic runs SQLite DDL without one enclosing transaction, so BEGIN IMMEDIATE alone does not keep a
    # second replica from starting the same migration: replicas take turns on a lock file beside the database.
    path = database.engine.url.database
    if not database.is_sqlite or not path or path == ":memory:":
        yield
        return
    fd = os.open(f"{path}.migrate-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision; safe to call from several processes at once."""
    with _sqlite_migration_lock(database), database.engine.connect() as conn:
        if database.is_sqlite:
            # BEGIN IMMEDIATE: the first process to start migrating holds the write lock until it commits.
            conn = conn.execution_options(**{WRITE_OPTION: True})
        else:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            conn.commit()
        try:
            config = alembic_config(database.url)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
        finally:
            if not database.is_sqlite:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                conn.commit()

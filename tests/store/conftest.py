"""A migrated, empty database per test, on SQLite (a WAL file) and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.servers import PostgresCluster

from ims.store import migrate
from ims.store.db import Database

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Parametrize with `pytest.mark.parametrize("backend", BACKENDS, indirect=True)`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL on the test's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ims.sqlite3'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"ims_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def open_database(database_url: str) -> Iterator[Callable[[], Database]]:
    """Opens more handles on the same database (as other processes or replicas would)."""
    opened: list[Database] = []

    def opener() -> Database:
        database = Database(database_url)
        opened.append(database)
        return database

    yield opener
    for database in opened:
        database.dispose()


@pytest.fixture
def database(open_database: Callable[[], Database]) -> Database:
    database = open_database()
    migrate.upgrade(database)
    return database

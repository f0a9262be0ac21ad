"""Reads for the response cache (ims.api.caching): collection versions and single records, fast on SQLite.

On SQLite both are read on a plain sqlite3 connection of the calling thread, in tens of microseconds, so the
API may call them on its event loop. On PostgreSQL `fast` is False: the API runs them in its thread pool.
"""

from __future__ import annotations

from typing import Any

from ims.domain.errors import NotFound
from ims.store import repository
from ims.store.db import Database
from ims.store.repository import RecordRepository
from ims.store.versions import VersionReader

COLLECTIONS: dict[str, RecordRepository] = {
    "public_keys": repository.public_keys,
    "recipes": repository.recipes,
    "images": repository.images,
    "jobs": repository.jobs,
    "remote_build_nodes": repository.remote_build_nodes,
}


class Reads:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.versions = VersionReader(database)

    @property
    def fast(self) -> bool:
        return self.versions.fast

    def version(self, collection: str) -> int:
        """The collection's version; ask before reading its records (see ims.store.versions)."""
        return self.versions.read(collection)

    @property
    def version_on_loop(self) -> bool:
        """True when version_async() reads on the event loop without a thread (PostgreSQL through libpq)."""
        return not self.versions.fast and self.versions.on_loop is not None

    async def version_async(self, collection: str) -> int:
        """version(), asked on the running event loop (only when version_on_loop)."""
        assert self.versions.on_loop is not None
        return await self.versions.on_loop.read(collection)

    async def aclose(self) -> None:
        """Close what the event loop holds open (its PostgreSQL connection)."""
        await self.versions.aclose()

    def record(self, collection: str, record_id: str, *, deleted: bool = False) -> dict[str, Any]:
        """The record as the services' get() returns it; NotFound when there is none."""
        repo = COLLECTIONS[collection]
        if self.versions.fast:
            found = repo.raw_get(self.versions.raw(), record_id, deleted=deleted)
        else:
            with self.database.read() as conn:
                found = repo.get(conn, record_id, deleted=deleted)
        if found is None:
            raise NotFound()
        return found

    def records(self, collection: str, *, deleted: bool = False) -> list[dict[str, Any]]:
        """Every record, as the services' list() returns them without paging or filters."""
        repo = COLLECTIONS[collection]
        if self.versions.fast:
            return repo.raw_fetch(self.versions.raw(), deleted=deleted)
        with self.database.read() as conn:
            return repo.fetch(conn, deleted=deleted)

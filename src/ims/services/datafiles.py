"""Import and export of the original's eight JSON data files, on the database `ims serve` would use."""

from __future__ import annotations

from pathlib import Path

from ims.settings import Settings
from ims.store import migrate
from ims.store.datafiles import Report, export_directory, import_directory
from ims.store.db import Database

__all__ = ["DatabaseUnusable", "Report", "export_files", "import_files"]


class DatabaseUnusable(Exception):
    """The database could not be opened or brought to the newest schema (the message says which and why)."""


def _database(settings: Settings) -> Database:
    """The database of IMS_DATABASE_URL or IMS_DATA_DIR, brought to the newest schema."""
    database = Database(settings.effective_database_url, pool_size=1)
    try:
        migrate.upgrade(database)
    except Exception as exc:
        database.dispose()
        raise DatabaseUnusable(f"the database at {database.engine.url!r} is not usable: {exc}") from None
    return database


def import_files(settings: Settings, directory: Path, *, replace: bool = False, dry_run: bool = False) -> Report:
    database = _database(settings)
    try:
        return import_directory(database, directory, replace=replace, dry_run=dry_run)
    finally:
        database.dispose()


def export_files(settings: Settings, directory: Path, *, overwrite: bool = False, strict: bool = False) -> Report:
    database = _database(settings)
    try:
        return export_directory(database, directory, overwrite=overwrite, strict=strict)
    finally:
        database.dispose()

"""SQLite group commit (ims.store.group_commit): writers that queue up share one transaction and one commit, each
block keeps its own changes or none, and no block returns before the commit that holds its changes."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from ims.domain.errors import Conflict, Unavailable
from ims.store import repository
from ims.store.db import Database


def _image(name: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "created": "2026-01-02T03:04:05.000001",
        "name": name,
        "link": None,
        "arch": "x86_64",
        "metadata": {},
    }


def _stored_names(database: Database) -> set[str]:
    """Read on a connection of its own: what any other process would see."""
    path = database.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT json_extract(data, '$.name') FROM images")}


@contextmanager
def _counting_commits(database: Database) -> Iterator[list[int]]:
    commits: list[int] = []

    def count(_conn: Any) -> None:
        commits.append(1)

    event.listen(database.engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(database.engine, "commit", count)


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class _Writers:
    """Starts write blocks in threads and keeps what each one ended with."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[str, BaseException | None] = {}
        self.visible_on_return: dict[str, bool] = {}

    def start(self, name: str, block: Callable[[Any], None]) -> None:
        def run() -> None:
            try:
                with self.database.write() as conn:
                    block(conn)
                self.visible_on_return[name] = name in _stored_names(self.database)
                self.outcomes[name] = None
            except BaseException as exc:
                self.outcomes[name] = exc

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()


def _insert(name: str) -> Callable[[Any], None]:
    return lambda conn: repository.images.insert(conn, _image(name))


def _queue_behind_a_held_turn(database: Database, writers: _Writers, queued: dict[str, Callable[[Any], None]]) -> None:
    """`first` holds the turn until the others wait for theirs, so all of them land in one transaction."""
    assert database.sqlite_writer is not None
    release = threading.Event()

    def first(conn: Any) -> None:
        repository.images.insert(conn, _image("first"))
        assert release.wait(10)

    writers.start("first", first)
    _wait_until(lambda: database.sqlite_writer is not None and database.sqlite_writer.waiting == 0
                and "first" in {t.name for t in writers.threads})
    time.sleep(0.05)  # `first` is inside its block
    for name, block in queued.items():
        writers.start(name, block)
    _wait_until(lambda: database.sqlite_writer is not None and database.sqlite_writer.waiting == len(queued))
    release.set()
    writers.join()


def test_queued_writers_share_one_commit_and_return_after_it(database: Database) -> None:
    writers = _Writers(database)
    with _counting_commits(database) as commits:
        _queue_behind_a_held_turn(database, writers, {f"w{i}": _insert(f"w{i}") for i in range(5)})
    assert all(outcome is None for outcome in writers.outcomes.values()), writers.outcomes
    assert _stored_names(database) == {"first", "w0", "w1", "w2", "w3", "w4"}
    assert len(commits) == 1
    # Every block's `with` returned only once its row could be read by anyone.
    assert all(writers.visible_on_return.values()) and len(writers.visible_on_return) == 6


def test_a_failing_block_undoes_only_its_own_changes(database: Database) -> None:
    def refused(conn: Any) -> None:
        repository.images.insert(conn, _image("refused"))
        raise Conflict("no")

    writers = _Writers(database)
    _queue_behind_a_held_turn(database, writers, {"before": _insert("before"), "refused": refused,
                                                   "after": _insert("after")})
    assert isinstance(writers.outcomes["refused"], Conflict)
    assert writers.outcomes["before"] is None and writers.outcomes["after"] is None
    assert _stored_names(database) == {"first", "before", "after"}


def test_a_failed_commit_fails_every_block_in_it(database: Database) -> None:
    # A deferred foreign key is checked by COMMIT itself: the one way to make SQLite refuse a commit at will.
    with database.write() as conn:
        conn.execute(text("CREATE TABLE parent (id TEXT PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE child (parent_id TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"))

    def orphan(conn: Any) -> None:
        repository.images.insert(conn, _image("orphan"))
        conn.execute(text("INSERT INTO child VALUES ('missing')"))

    writers = _Writers(database)
    _queue_behind_a_held_turn(database, writers, {"orphan": orphan, "innocent": _insert("innocent")})
    for name in ("first", "orphan", "innocent"):
        assert isinstance(writers.outcomes[name], Unavailable), writers.outcomes
    assert _stored_names(database) == set()
    # The writer is usable again.
    with database.write() as conn:
        repository.images.insert(conn, _image("later"))
    assert _stored_names(database) == {"later"}


def test_a_write_inside_a_write_joins_it(database: Database) -> None:
    with database.write() as conn:
        repository.images.insert(conn, _image("outer"))
        with pytest.raises(Conflict), database.write() as inner:
            repository.images.insert(inner, _image("inner"))
            raise Conflict("no")
        with database.write() as inner:
            repository.images.insert(inner, _image("kept"))
    assert _stored_names(database) == {"outer", "kept"}


def test_many_threads_lose_nothing(database: Database, tmp_path: Path) -> None:
    other = Database(str(database.engine.url))  # a second process's handle: its own queue, the same lock file
    try:
        names = [f"n{i}" for i in range(400)]
        errors: list[BaseException] = []

        def worker(handle: Database, mine: list[str]) -> None:
            try:
                for name in mine:
                    with handle.write() as conn:
                        repository.images.insert(conn, _image(name))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(database if i % 2 else other, names[i::16]))
                   for i in range(16)]
        with _counting_commits(database) as commits, _counting_commits(other) as other_commits:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert not errors
        assert _stored_names(database) == set(names)
        assert len(commits) + len(other_commits) <= len(names)
    finally:
        other.dispose()

"""Writes run on an event loop (ims.store.loop_writes): they share a transaction and a commit, each keeps its own
changes or none, none is answered before the commit that holds it, and the loop never waits for the database.
Also the hand-over of the cross-process write lock (ims.store.group_commit.ProcessWriteLock)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from tests.store.test_group_commit import _counting_commits, _image, _stored_names

from ims.domain.errors import Conflict, Unavailable
from ims.store import repository
from ims.store.db import Database
from ims.store.group_commit import ProcessWriteLock, SqliteWriter
from ims.store.loop_writes import write_on_loop


def _writer(database: Database) -> SqliteWriter:
    assert database.sqlite_writer is not None
    return database.sqlite_writer


def _insert(database: Database, name: str, refuse: bool = False) -> str:
    """A use case's write: its own write block (a savepoint of the loop's transaction)."""
    with database.write() as conn:
        repository.images.insert(conn, _image(name))
        if refuse:
            raise Conflict("no")
    return name


async def _write_all(database: Database, names: list[str], refused: tuple[str, ...] = ()) -> list[Any]:
    """Each write in a task of its own, as requests are; what each one's caller saw right after its answer."""
    async def one(name: str) -> Any:
        try:
            await write_on_loop(_writer(database), _insert, database, name, name in refused)
        except Exception as exc:
            return exc
        return name in _stored_names(database)

    return list(await asyncio.gather(*(one(name) for name in names)))


def test_writes_share_one_commit_and_are_answered_after_it(database: Database) -> None:
    names = [f"w{i}" for i in range(10)]
    with _counting_commits(database) as commits:
        seen = asyncio.run(_write_all(database, names))
    assert seen == [True] * 10  # every answer came once the row could be read by anyone
    assert _stored_names(database) == set(names)
    assert len(commits) == 1


def test_a_failing_write_undoes_only_its_own_changes(database: Database) -> None:
    seen = asyncio.run(_write_all(database, ["before", "refused", "after"], refused=("refused",)))
    assert seen[0] is True and seen[2] is True
    assert isinstance(seen[1], Conflict)
    assert _stored_names(database) == {"before", "after"}


def test_a_failed_commit_fails_every_write_in_it(database: Database) -> None:
    # A deferred foreign key is checked by COMMIT itself: the one way to make SQLite refuse a commit at will.
    with database.write() as conn:
        conn.execute(text("CREATE TABLE parent (id TEXT PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE child (parent_id TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"))

    def orphan() -> None:
        with database.write() as conn:
            repository.images.insert(conn, _image("orphan"))
            conn.execute(text("INSERT INTO child VALUES ('missing')"))

    async def both() -> list[BaseException | None]:
        writer = _writer(database)
        outcomes = await asyncio.gather(write_on_loop(writer, orphan), write_on_loop(writer, _insert, database,
                                        "innocent"), return_exceptions=True)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    outcomes = asyncio.run(both())
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
    assert _stored_names(database) == set()
    assert asyncio.run(_write_all(database, ["later"])) == [True]  # the loop's writer is usable again
    assert _stored_names(database) == {"later"}


def test_the_loop_runs_on_while_a_thread_holds_the_database(database: Database) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with database.write() as conn:
            repository.images.insert(conn, _image("thread"))
            holding.set()
            assert release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)

    async def main() -> list[Any]:
        writes = asyncio.ensure_future(_write_all(database, ["a", "b"]))
        ticks = 0
        for _ in range(20):  # the loop keeps serving while the writes wait for the database
            await asyncio.sleep(0.005)
            ticks += 1
        assert not writes.done() and ticks == 20
        release.set()
        return await writes

    try:
        assert asyncio.run(main()) == [True, True]
    finally:
        release.set()
        thread.join(10)
    assert _stored_names(database) == {"thread", "a", "b"}


def test_after_commit_callbacks_run_once_the_write_is_durable(database: Database) -> None:
    seen: list[bool] = []

    def write_and_tell() -> None:
        with database.write() as conn:
            repository.images.insert(conn, _image("told"))
        database.after_commit(lambda: seen.append("told" in _stored_names(database)))
        assert seen == []  # not before the commit

    async def main() -> None:
        await write_on_loop(_writer(database), write_and_tell)

    asyncio.run(main())
    assert seen == [True]
    # Outside any write block the callback runs at once.
    database.after_commit(lambda: seen.append(False))
    assert seen == [True, False]


@pytest.mark.parametrize("hold", [0.0002, 0.002])
def test_a_waiting_process_takes_the_lock_from_one_that_keeps_writing(tmp_path: Path, hold: float) -> None:
    """Two handles of the lock file are two processes to flock. `busy` takes the lock again as soon as it has
    released it, as a process with a steady stream of writes does; `other` must still get its turns quickly."""
    path = tmp_path / "db.writer-lock"
    busy, other = ProcessWriteLock(path, timeout=10), ProcessWriteLock(path, timeout=10)
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            busy.acquire()
            time.sleep(hold)
            busy.release()

    thread = threading.Thread(target=keep_writing)
    thread.start()
    waits = []
    try:
        time.sleep(0.05)
        for _ in range(20):
            started = time.monotonic()
            other.acquire()
            waits.append(time.monotonic() - started)
            other.release()
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
        busy.close()
        other.close()
    # Without the hand-over, `other` waited until `busy` happened to be between two transactions when it polled.
    assert max(waits) < 0.1, waits


def test_concurrent_loops_and_threads_lose_nothing(database: Database) -> None:
    """Two handles (two processes), each with loop writes and thread writes at once."""
    other = Database(str(database.engine.url))
    names = [f"n{i}" for i in range(300)]
    errors: list[BaseException] = []

    def by_threads(handle: Database, mine: list[str]) -> None:
        try:
            for name in mine:
                _insert(handle, name)
        except BaseException as exc:
            errors.append(exc)

    def by_loop(handle: Database, mine: list[str]) -> None:
        try:
            seen = asyncio.run(_write_all(handle, mine))
            assert seen == [True] * len(mine), seen
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [
            threading.Thread(target=by_loop, args=(database, names[0::4])),
            threading.Thread(target=by_loop, args=(other, names[1::4])),
            threading.Thread(target=by_threads, args=(database, names[2::4])),
            threading.Thread(target=by_threads, args=(other, names[3::4])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert _stored_names(database) == set(names)
    finally:
        other.dispose()


def test_a_finished_loop_is_not_kept_alive(database: Database) -> None:
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(_write_all(database, ["once"])) == [True]
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None

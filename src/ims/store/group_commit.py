"""SQLite group commit: the write blocks of concurrent requests share one transaction and one durable commit.

SQLite has one writer at a time, and each commit with `synchronous=FULL` waits for the disk. Writers of one
process therefore take turns on one connection: each block runs alone, inside a SAVEPOINT of the transaction
that is open, so a block that raises undoes only its own changes. The writer that finds nobody waiting for a
turn commits for everyone in the transaction; the others wait for that commit. A block's `with` returns only
after the COMMIT that holds its changes, so whatever a caller acknowledges is durable, exactly as with one
transaction per block; a failed commit fails every block that was in it.

Writers of other processes on the same file (`ims serve` runs one process per CPU) queue on a lock file beside
the database, held from BEGIN IMMEDIATE to COMMIT. Both queues are ours rather than SQLite's busy handler,
which polls with sleeps of up to 100 ms: under load that idles the database and gives writers long tails.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, RootTransaction
from sqlalchemy.exc import OperationalError

from ims.domain.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# What the database raises when it cannot go on (disk full, I/O error, locked): through SQLAlchemy or not.
DATABASE_ERRORS = (OperationalError, sqlite3.OperationalError)

# The execution option that makes the engine's "begin" hook emit BEGIN IMMEDIATE (see ims.store.db).
WRITE_OPTION = "ims_write"

# Called after each commit with the number of write blocks it made durable (the metrics count them).
COMMIT_HOOKS: list[Callable[[int], None]] = []

# Bounds how long the first block of a transaction waits for the commit behind a stream of new writers.
MAX_BLOCKS_PER_COMMIT = 64


def _unavailable(exc: BaseException) -> Unavailable:
    reason = getattr(exc, "orig", None) or exc
    return Unavailable(f"The database is not available: {reason}")


class ProcessWriteLock:
    """An exclusive lock file shared by every process writing one SQLite file, handed over fairly.

    Taken by polling (one waiting thread per process; 20 µs at first, then every 100 µs) rather than blocking,
    so a process that hangs while holding it gives the others a 503 after the timeout instead of hanging them
    too. A waiting process also holds a shared lock on a second file while it polls. A process that releases
    the lock while another waits lets that one take it first (up to `HANDOVER`): without that, a process with a
    steady stream of writes takes the lock back a few µs after releasing it, and the other one's writers wait
    for hundreds of milliseconds."""

    HANDOVER = 0.0003  # a waiter polls at least every 100 µs, but needs its process's GIL to take the lock

    def __init__(self, path: Path | None, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._waiting_fd: int | None = None
        self._defer_until = 0.0  # after handing over: when this process may try to take the lock again

    def acquire(self) -> None:
        if self.path is None:
            return
        waiting_fd = self._open_files()
        defer = self._defer_until - time.monotonic()
        if defer > 0:
            time.sleep(defer)
        if self._try():
            return
        fcntl.flock(waiting_fd, fcntl.LOCK_SH)  # never held exclusively but for an instant (release)
        try:
            deadline = time.monotonic() + self.timeout
            pause = 0.00002  # another process's transaction often ends within a fraction of a millisecond
            while not self._try():
                if time.monotonic() > deadline:
                    raise Unavailable("The database is not available: another process holds the write lock.")
                time.sleep(pause)
                pause = min(pause * 2, 0.0001)
        finally:
            fcntl.flock(waiting_fd, fcntl.LOCK_UN)

    def try_acquire(self) -> bool:
        """Take the lock if it is free and no other process has its turn first; never waits."""
        if self.path is None:
            return True
        self._open_files()
        if time.monotonic() < self._defer_until:
            return False
        return self._try()

    def _open_files(self) -> int:
        """Opens the two lock files on first use; returns the waiting one's descriptor."""
        assert self.path is not None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._waiting_fd is None:
            self._waiting_fd = os.open(f"{self.path}.waiting", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._waiting_fd

    def _try(self) -> bool:
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        if self._fd is None or self._waiting_fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._waiting_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process waits for the lock: its turn first
            self._defer_until = time.monotonic() + self.HANDOVER
        else:
            fcntl.flock(self._waiting_fd, fcntl.LOCK_UN)
            self._defer_until = 0.0

    def close(self) -> None:
        for fd in (self._fd, self._waiting_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._waiting_fd = None


class _Transaction:
    """The open write transaction and the blocks waiting for its commit."""

    def __init__(self, conn: Connection, root: RootTransaction) -> None:
        self.conn = conn
        self.root = root
        self.blocks = 0
        self.broken: BaseException | None = None  # the connection failed; the transaction can only roll back
        self.error: BaseException | None = None  # why the commit failed, for every block in it
        self.finished = threading.Event()
        self.after_commit: list[Callable[[], None]] = []


class SqliteWriter:
    def __init__(self, engine: Engine, lock_path: Path | None, timeout: float = 60.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self._turn = threading.Lock()  # one block at a time, on the open transaction's connection
        self._count_lock = threading.Lock()
        self._waiting = 0  # threads waiting for a turn: the last block before none are left commits
        self._open: _Transaction | None = None
        self._file_lock = ProcessWriteLock(lock_path, timeout)
        self._local = threading.local()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        current: _Transaction | None = getattr(self._local, "transaction", None)
        if current is not None:
            # A write block inside one of this thread's write blocks: a savepoint of the same transaction.
            if (yield from self._run_block(current)):
                current.blocks += 1
            return
        self._take_turn()
        try:
            transaction = self._open or self._begin()
        except BaseException:
            self._turn.release()
            raise
        self._local.transaction = transaction
        succeeded = False
        try:
            succeeded = yield from self._run_block(transaction)
        finally:
            self._local.transaction = None
            if succeeded:
                transaction.blocks += 1
            if self._waiting > 0 and transaction.blocks < MAX_BLOCKS_PER_COMMIT and transaction.broken is None:
                self._turn.release()  # a waiting writer joins this transaction and commits it, or passes it on
            else:
                self._finish(transaction)
        if succeeded:
            self._wait_for_commit(transaction)

    def after_commit(self, callback: Callable[[], None]) -> bool:
        """Run `callback` once the transaction this thread writes in is durable (not at all if it fails).
        Returns False when this thread is in no write block: then nothing is pending and the caller acts now."""
        current: _Transaction | None = getattr(self._local, "transaction", None)
        if current is None:
            return False
        current.after_commit.append(callback)
        return True

    # --- for ims.store.loop_writes: a transaction opened, written in and committed by an event loop's calls
    def try_open(self) -> _Transaction | None:
        """This process's turn and the open transaction, when both can be had at once; None otherwise."""
        if not self._turn.acquire(blocking=False):
            return None
        if self._open is not None:
            return self._open  # a writer passed it on: this caller commits it
        if not self._file_lock.try_acquire():
            self._turn.release()
            return None
        try:
            return self._begin(locked=True)
        except BaseException:
            self._turn.release()
            raise

    def open(self) -> _Transaction:
        """This process's turn and the open transaction, waiting for them (at most the timeout)."""
        self._take_turn()
        try:
            return self._open or self._begin()
        except BaseException:
            self._turn.release()
            raise

    def run_in(self, transaction: _Transaction, call: Callable[[], T]) -> T:
        """Run `call` on this thread inside `transaction`: its Database.write blocks are savepoints of it, so a
        block that raises undoes only its own changes, and one that ends keeps them, as in a thread."""
        self._local.transaction = transaction
        try:
            return call()
        finally:
            self._local.transaction = None

    def commit(self, transaction: _Transaction) -> None:
        """Commit (or roll back, when broken) a transaction from try_open or open, and give up the turn; raises
        Unavailable when its changes are not durable."""
        self._finish(transaction)
        if transaction.error is not None:
            raise _unavailable(transaction.error) from transaction.error

    @property
    def waiting(self) -> int:
        """How many writers of this process wait for their turn."""
        return self._waiting

    def _take_turn(self) -> None:
        with self._count_lock:
            self._waiting += 1
        try:
            acquired = self._turn.acquire(timeout=self._timeout)
        finally:
            with self._count_lock:
                self._waiting -= 1
        if not acquired:
            raise Unavailable("The database is not available: too many writers are waiting.")

    def _begin(self, *, locked: bool = False) -> _Transaction:
        """Called holding the turn, with no transaction open (and, when `locked`, the process lock)."""
        if not locked:
            self._file_lock.acquire()
        try:
            conn = self._engine.connect().execution_options(**{WRITE_OPTION: True})
            try:
                root = conn.begin()
            except BaseException:
                conn.close()
                raise
        except DATABASE_ERRORS as exc:
            self._file_lock.release()
            raise _unavailable(exc) from exc
        except BaseException:
            self._file_lock.release()
            raise
        self._open = _Transaction(conn, root)
        return self._open

    def _run_block(self, transaction: _Transaction) -> Generator[Connection, None, bool]:
        """Yields the connection to the caller's block, inside a savepoint. Returns whether the block's changes
        stay in the transaction."""
        # Savepoints go straight to sqlite3: through SQLAlchemy they cost more than the block's own INSERT.
        raw: sqlite3.Connection = transaction.conn.connection.driver_connection  # type: ignore[assignment]
        try:
            raw.execute("SAVEPOINT ims_block")
        except DATABASE_ERRORS as exc:
            transaction.broken = exc
            raise _unavailable(exc) from exc
        try:
            yield transaction.conn
        except BaseException as exc:
            try:
                raw.execute("ROLLBACK TO ims_block")
                raw.execute("RELEASE ims_block")
            except Exception as broken:
                transaction.broken = broken
            if isinstance(exc, DATABASE_ERRORS):
                transaction.broken = transaction.broken or exc
                raise _unavailable(exc) from exc
            raise
        try:
            raw.execute("RELEASE ims_block")
        except DATABASE_ERRORS as exc:
            transaction.broken = exc
            raise _unavailable(exc) from exc
        return True

    def _finish(self, transaction: _Transaction) -> None:
        """Commit (or, when broken, roll back) the open transaction. Called holding the turn; releases it."""
        try:
            if transaction.broken is not None:
                transaction.error = transaction.broken
                transaction.root.rollback()
            else:
                transaction.root.commit()
        except Exception as exc:
            transaction.error = transaction.error or exc
        finally:
            if transaction.error is not None:
                # SQLite keeps a transaction open after some failed COMMITs (a deferred constraint): closing
                # the sqlite3 connection is the sure way to end it, and the pool opens a fresh one.
                transaction.conn.invalidate()
            try:
                transaction.conn.close()
            finally:
                self._open = None
                self._file_lock.release()
                self._turn.release()
                transaction.finished.set()
        if transaction.error is None:
            for hook in COMMIT_HOOKS:
                try:
                    hook(transaction.blocks)
                except Exception:  # counting must never turn a durable commit into an error
                    log.exception("a commit hook failed")
            for callback in transaction.after_commit:
                try:
                    callback()
                except Exception:
                    log.exception("an after-commit callback failed")

    def _wait_for_commit(self, transaction: _Transaction) -> None:
        # The writer that took the next turn commits. Should every waiting writer give up meanwhile (each waits
        # at most the timeout), nobody would: then a block waiting here commits the transaction itself.
        while not transaction.finished.wait(1.0):
            if self._turn.acquire(blocking=False):
                if self._open is transaction:
                    self._finish(transaction)
                else:
                    self._turn.release()
        if transaction.error is not None:
            raise _unavailable(transaction.error) from transaction.error

    def close(self) -> None:
        self._file_lock.close()

"""SQLite writes run by the event loop itself, in batches that share one transaction and one commit.

A short write (a record's INSERT or UPDATE, tens of µs) costs less than handing it to a thread: the hand-off,
and the thread's contention with the event loop for the interpreter on every statement, cost a record write
more CPU than its statements. So the loop runs such writes itself, each in its own savepoint (a write that
raises undoes only its own changes), and hands only the waits to a thread: taking the database from another
process or thread, and the durable COMMIT.

The writes the loop submits during one pass wait for the end of that pass; then they run back to back in one
transaction, which is committed at once. The database (and the lock other processes wait for) is held for the
writes and the commit only, never while the loop parses, validates or answers other requests. Writes that
arrive during a commit form the next batch. Each write's answer is sent once the commit that holds it is
durable, so what a request acknowledges is never lost.

Only writes that neither wait for anything but the database nor read much belong here: a write that calls S3
or sleeps would stop every request of the process while it runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ims.store.group_commit import SqliteWriter, _Transaction

T = TypeVar("T")


@dataclass
class _Write:
    future: asyncio.Future[Any]
    context: contextvars.Context
    call: Callable[[], Any]


class LoopWriter:
    """The writes of one event loop to one SQLite database (see the module docstring)."""

    # Every method runs on the loop, which it asks for rather than keeps: the registry below holds LoopWriters
    # by their loop weakly, and a reference to the loop here would keep every loop alive.
    def __init__(self, writer: SqliteWriter) -> None:
        self._writer = writer
        self._pending: list[_Write] = []  # waiting for the next batch
        self._flush_due = False  # a flush of the pending writes is scheduled on the loop
        self._busy = False  # a thread opens or commits a transaction

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Write(future, contextvars.copy_context(), call))
        if not self._busy and not self._flush_due:
            # The writes the loop submits before this callback runs form one batch.
            self._flush_due = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_due = False
        if self._busy or not self._pending:
            return
        try:
            transaction = self._writer.try_open()
        except BaseException as exc:
            self._fail_pending(exc)
            return
        if transaction is not None:
            self._write_batch(transaction)
            return
        self._busy = True  # another thread or process holds the database: wait for it off the loop
        waiting = asyncio.get_running_loop().run_in_executor(None, self._writer.open)
        waiting.add_done_callback(self._open_done)

    def _open_done(self, waiting: asyncio.Future[_Transaction]) -> None:
        self._busy = False
        error = waiting.exception()
        if error is not None:
            self._fail_pending(error)
        else:
            self._write_batch(waiting.result())

    def _write_batch(self, transaction: _Transaction) -> None:
        """Run every pending write, back to back, then commit: the database is held for the writes only, not
        for whatever else the loop does meanwhile."""
        pending, self._pending = self._pending, []
        written = [self._run(transaction, write) for write in pending]
        self._busy = True
        committing = asyncio.get_running_loop().run_in_executor(None, self._writer.commit, transaction)
        committing.add_done_callback(functools.partial(self._committed, written))

    def _run(self, transaction: _Transaction, write: _Write) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
        try:
            result = write.context.run(self._writer.run_in, transaction, write.call)
        except BaseException as exc:  # handed to its request, which answers it
            return write.future, None, exc
        return write.future, result, None

    def _committed(
        self, written: list[tuple[asyncio.Future[Any], Any, BaseException | None]], committing: asyncio.Future[None]
    ) -> None:
        self._busy = False
        failed = committing.exception()
        for future, result, error in written:
            if future.cancelled():
                continue
            if error is not None or failed is not None:
                future.set_exception(error or failed)  # type: ignore[arg-type]
            else:
                future.set_result(result)
        self._flush()

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, []
        for write in pending:
            if not write.future.cancelled():
                write.future.set_exception(error)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, LoopWriter]] = weakref.WeakKeyDictionary()


def loop_writer(writer: SqliteWriter) -> LoopWriter:
    """The running loop's LoopWriter for `writer`."""
    loop = asyncio.get_running_loop()
    by_writer = _writers.setdefault(loop, {})
    found = by_writer.get(id(writer))
    if found is None:
        found = by_writer[id(writer)] = LoopWriter(writer)
    return found


async def write_on_loop(writer: SqliteWriter, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` on the running loop as one write of its current batch; return its result once
    the batch's commit is durable."""
    return await loop_writer(writer).submit(functools.partial(fn, *args, **kwargs))

"""Access to the use cases from a request."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, TypeVar

from fastapi import Request

from ims.services.context import ServiceContext
from ims.services.records import ImageService, PublicKeyService, RecipeService
from ims.services.remote_nodes import RemoteNodeService

T = TypeVar("T")


@dataclass
class Services:
    ctx: ServiceContext
    public_keys: PublicKeyService
    recipes: RecipeService
    images: ImageService
    remote_nodes: RemoteNodeService
    extra: dict[str, Any]

    @classmethod
    def build(cls, ctx: ServiceContext) -> Services:
        return cls(
            ctx, PublicKeyService(ctx), RecipeService(ctx), ImageService(ctx), RemoteNodeService(ctx), extra={}
        )


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking use case off the event loop, on this process's use-case threads.

    A plain queue and a future: anyio's run_in_threadpool (a capacity limiter, a cancel scope and a
    condition-variable queue for every call) cost a record write more than its INSERT. As there, the call runs
    to its end even when the request is cancelled, and in a copy of the caller's context."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    _threads().put((loop, future, contextvars.copy_context(), fn, args, kwargs))
    return await future


_THREADS = 40  # as many as anyio runs at once by default; more calls wait in the queue
_pool: tuple[int, SimpleQueue[Any]] | None = None
_pool_lock = threading.Lock()


def _threads() -> SimpleQueue[Any]:
    global _pool
    pool = _pool
    if pool is not None and pool[0] == os.getpid():
        return pool[1]
    with _pool_lock:  # first call in this process (a forked server process starts its own threads)
        if _pool is None or _pool[0] != os.getpid():
            queue: SimpleQueue[Any] = SimpleQueue()
            for number in range(_THREADS):
                threading.Thread(target=_work, args=(queue,), name=f"ims-call-{number}", daemon=True).start()
            _pool = (os.getpid(), queue)
        return _pool[1]


def _work(queue: SimpleQueue[Any]) -> None:
    while True:
        loop, future, context, fn, args, kwargs = queue.get()
        try:
            result, error = context.run(fn, *args, **kwargs), None
        except BaseException as exc:  # handed to the awaiting request, which answers it
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for the answer any more
            loop.call_soon_threadsafe(_settle, future, result, error)
        del loop, future, context, fn, args, kwargs, result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def call_batched(ctx: ServiceContext, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a short use case that writes and waits for nothing but the database (no S3 call) with the writes
    of other requests in one transaction and one commit: on SQLite, on the event loop itself (see
    ims.store.loop_writes); elsewhere in the thread pool, as `call`. Answered once its commit is durable."""
    if not ctx.writes_on_loop:
        return await call(fn, *args, **kwargs)
    return await ctx.write_on_loop(fn, *args, **kwargs)

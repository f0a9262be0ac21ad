"""Encoded GET responses kept per collection version, and conditional requests (`ETag`, `If-None-Match`).

Every record table has a version in the database that a trigger bumps in the same transaction as any change
the API would show (migration 0004), whoever writes: this process, another worker process, another replica,
the task or job worker, an import. A GET first reads that version (microseconds on SQLite; on PostgreSQL one
prepared SELECT on the event loop's own connection, see ims.store.versions), then answers from
this process's cache when an entry of that version exists: the stored bytes, no query of the records, no
per-record objects. Otherwise one fill reads the records, encodes them exactly as before (orjson, the same
bytes as ims.api.http.FastJSONResponse) and files them under the version read *before* the records, so an
entry can hold newer data than its version but never older: it is never served stale.

A list's fill also files each of its records under the record's own key, so gets after a list are answered
from memory; a record not cached yet is read alone (on SQLite in tens of microseconds, on the event loop).

The ETag is a hash of the body: equal bytes have equal tags in every process, and any change of the bytes
changes it. `If-None-Match` with a matching tag (or `*`) answers 304 with no body.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ims.api.deps import Services, services
from ims.domain.errors import ImsError
from ims.services.reads import Reads

# Per process; a list of 10,000 images is about 1.8 MB, one image about 150 bytes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_ENTRY_OVERHEAD = 200  # what the dictionaries spend on an entry beyond its body, roughly
_JSON = "application/json"
_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode(content: Any) -> bytes:
    # The same rendering as ims.api.http.FastJSONResponse, so the bytes on the wire do not change.
    return orjson.dumps(content, option=_OPTIONS)


class Entry:
    __slots__ = ("version", "body", "_etag")

    def __init__(self, version: int, body: bytes) -> None:
        self.version = version
        self.body = body
        self._etag: str | None = None

    @property
    def etag(self) -> str:
        if self._etag is None:
            self._etag = '"' + hashlib.blake2b(self.body, digest_size=16).hexdigest() + '"'
        return self._etag


class Filled:
    """What one fill produced: the entry asked for and, for a list, an entry per record."""

    __slots__ = ("entry", "records")

    def __init__(self, entry: Entry, records: list[tuple[str, Entry]]) -> None:
        self.entry = entry
        self.records = records


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison: `W/` prefixes do not count; `*` matches any current entity."""
    if header.strip() == "*":
        return True
    return any(candidate.strip().removeprefix("W/") == etag for candidate in header.split(","))


def respond(request: Request, entry: Entry) -> Response:
    header = request.headers.get("if-none-match")
    if header is not None and etag_matches(header, entry.etag):
        return Response(status_code=304, headers={"ETag": entry.etag})
    return Response(entry.body, media_type=_JSON, headers={"ETag": entry.etag})


_gc_lock = threading.Lock()
_gc_pauses = 0


@contextmanager
def _no_collection() -> Iterator[None]:
    """A fill builds thousands of short-lived dicts at once: the cyclic collector would walk them over and over
    (a third of a fill's time in profiles) though they hold no cycles. Reference counting frees them."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


def _fill_list(version: int, load: Callable[[], list[dict[str, Any]]], id_field: str) -> Filled:
    with _no_collection():
        records = load()
        parts = [encode(record) for record in records]
        entries = [(str(record[id_field]), Entry(version, part)) for record, part in zip(records, parts, strict=True)]
        del records
    # orjson writes a list as its items joined by commas in brackets: the same bytes as encode(records).
    return Filled(Entry(version, b"[" + b",".join(parts) + b"]"), entries)


def _fill_one(version: int, load: Callable[[], Any]) -> Filled:
    return Filled(Entry(version, encode(load())), [])


class ResponseCache:
    def __init__(self, reads: Reads, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.reads = reads
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, Hashable], Entry] = OrderedDict()
        self._size = 0
        self._filling: dict[tuple[str, Hashable, int], asyncio.Future[Filled]] = {}

    async def version(self, collection: str) -> int:
        """Read fresh from the database on every call (Unavailable when it cannot answer)."""
        if self.reads.fast:
            return self.reads.version(collection)
        if self.reads.version_on_loop:
            return await self.reads.version_async(collection)
        return await run_in_threadpool(self.reads.version, collection)

    async def close(self) -> None:
        await self.reads.aclose()

    def _current(self, slot: tuple[str, Hashable], version: int) -> Entry | None:
        entry = self._entries.get(slot)
        if entry is not None and entry.version == version:
            self._entries.move_to_end(slot)
            return entry
        return None

    async def record(self, collection: str, key: Hashable, record_id: str, *, deleted: bool = False) -> Entry:
        """One record, as the services' get() returns it (NotFound raised as theirs)."""
        version = await self.version(collection)
        slot = (collection, key)
        entry = self._current(slot, version)
        if entry is not None:
            return entry
        if self.reads.fast:
            entry = Entry(version, encode(self.reads.record(collection, record_id, deleted=deleted)))
        else:
            load = lambda: self.reads.record(collection, record_id, deleted=deleted)  # noqa: E731
            entry = (await run_in_threadpool(_fill_one, version, load)).entry
        self._store(slot, entry)
        return entry

    async def listing(
        self,
        collection: str,
        key: Hashable,
        load: Callable[[], list[dict[str, Any]]],
        *,
        record_key: str,
        id_field: str = "id",
    ) -> Entry:
        """A list; `load` (blocking, run in a thread) gives the records on a miss, each then also filed under
        (record_key, its id). Concurrent misses of one key and version share one fill."""
        version = await self.version(collection)
        slot = (collection, key)
        entry = self._current(slot, version)
        if entry is not None:
            return entry
        filling = self._filling.get((collection, key, version))
        if filling is None:
            filling = asyncio.ensure_future(run_in_threadpool(_fill_list, version, load, id_field))
            self._filling[(collection, key, version)] = filling
            filling.add_done_callback(lambda done: self._filled(collection, slot, record_key, version, done))
        return (await asyncio.shield(filling)).entry

    def _filled(
        self, collection: str, slot: tuple[str, Hashable], record_key: str, version: int, done: asyncio.Future[Filled]
    ) -> None:
        self._filling.pop((slot[0], slot[1], version), None)
        if done.cancelled() or done.exception() is not None:
            return
        filled = done.result()
        for record_id, entry in filled.records:
            self._store((collection, (record_key, record_id)), entry)
        self._store(slot, filled.entry)

    def _store(self, slot: tuple[str, Hashable], entry: Entry) -> None:
        current = self._entries.get(slot)
        if current is not None:
            if current.version > entry.version:
                return
            self._size -= len(current.body) + _ENTRY_OVERHEAD
        size = len(entry.body) + _ENTRY_OVERHEAD
        if size > self.max_bytes // 4:
            self._entries.pop(slot, None)
            return
        self._entries[slot] = entry
        self._entries.move_to_end(slot)
        self._size += size
        while self._size > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped.body) + _ENTRY_OVERHEAD

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0


def response_cache(request: Request) -> ResponseCache:
    found = services(request)
    cache = found.extra.get("response_cache")
    if cache is None:
        cache = found.extra.setdefault("response_cache", ResponseCache(Reads(found.ctx.database)))
    return cache  # type: ignore[no-any-return]


async def cached_list(
    request: Request,
    collection: str,
    key: Hashable,
    load: Callable[[], list[dict[str, Any]]],
    *,
    record_key: str = "get",
) -> Response:
    """A list GET of `collection` (a record table's name) from the cache, with ETag and 304."""
    return respond(request, await response_cache(request).listing(collection, key, load, record_key=record_key))


async def cached_record(request: Request, collection: str, record_id: str, *, deleted: bool = False) -> Response:
    """A record GET of `collection` from the cache, with ETag and 304."""
    key = ("deleted-get" if deleted else "get", record_id)
    return respond(request, await response_cache(request).record(collection, key, record_id, deleted=deleted))


# --- answering the hot GETs before routing
_RESOURCES = {"images": "images", "recipes": "recipes", "public-keys": "public_keys", "jobs": "jobs"}
_FAST_PATH = re.compile(r"^(?:/v2|/v3)?/(images|recipes|public-keys|jobs)(?:/([^/]+))?$")
_FAST_DELETED = re.compile(r"^/v3/deleted/(images|recipes|public-keys)(?:/([^/]+))?$")


class FastReads:
    """Innermost user middleware: a GET of a record or of a whole list (no query string), from an anonymous
    caller where anonymous callers may read (IMS_AUTH=none, no Authorization header), is answered from the
    cache before routing, the same bytes and headers the route gives (the route's share of a cached GET is most
    of its cost). Everything else, a record that is not there included, goes on to the routes unchanged; the
    middlewares outside this one (size limits, HEAD, audit, metrics) still see every request."""

    def __init__(self, app: ASGIApp, services: Services, jobs: bool = True) -> None:
        self.app = app
        self.services = services
        self.enabled = services.ctx.settings.auth_mode == "none"
        self.jobs = jobs
        self._loaders: dict[tuple[str, bool], Callable[[], list[dict[str, Any]]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("query_string")
            or any(name == b"authorization" for name, _ in scope["headers"])
        ):
            if scope["type"] == "lifespan":
                receive = self._closing_at_shutdown(receive)
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        deleted = False
        match = _FAST_PATH.match(path)
        if match is None:
            match = _FAST_DELETED.match(path)
            deleted = match is not None
            if match is None:
                await self.app(scope, receive, send)
                return
        collection, record_id = _RESOURCES[match.group(1)], match.group(2)
        if collection == "jobs" and not self.jobs:
            await self.app(scope, receive, send)
            return
        cache = self._cache()
        try:
            if record_id is not None:
                key = ("deleted-get" if deleted else "get", record_id)
                entry = await cache.record(collection, key, record_id, deleted=deleted)
            else:
                load = self._loader(collection, deleted)
                # The keys the routes use for a list without query parameters.
                list_key: Hashable = ("deleted-list" if deleted else "list", None, 0)
                if collection == "jobs":
                    list_key = ("list", (), None, None, 0)
                record_key = "deleted-get" if deleted else "get"
                entry = await cache.listing(collection, list_key, load, record_key=record_key)
        except ImsError:
            await self.app(scope, receive, send)  # the route answers it, exactly as before
            return
        header = next((value for name, value in scope["headers"] if name == b"if-none-match"), None)
        response = (
            Response(status_code=304, headers={"ETag": entry.etag})
            if header is not None and etag_matches(header.decode("latin-1"), entry.etag)
            else Response(entry.body, media_type=_JSON, headers={"ETag": entry.etag})
        )
        await response(scope, receive, send)

    def _closing_at_shutdown(self, receive: Receive) -> Receive:
        """The version reader's connection belongs to this event loop: close it on the loop, at shutdown."""

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                cache = self.services.extra.get("response_cache")
                if cache is not None:
                    await cache.close()
            return message

        return receiving

    def _cache(self) -> ResponseCache:
        cache = self.services.extra.get("response_cache")
        if cache is None:
            cache = self.services.extra.setdefault("response_cache", ResponseCache(Reads(self.services.ctx.database)))
        return cache  # type: ignore[no-any-return]

    def _loader(self, collection: str, deleted: bool) -> Callable[[], list[dict[str, Any]]]:
        found = self._loaders.get((collection, deleted))
        if found is None:
            found = self._loaders[(collection, deleted)] = self._make_loader(collection, deleted)
        return found

    def _make_loader(self, collection: str, deleted: bool) -> Callable[[], list[dict[str, Any]]]:
        # What the list routes' services return without paging or filters, read without SQLAlchemy rows.
        reads = self._cache().reads
        return lambda: reads.records(collection, deleted=deleted)


def install(app: FastAPI, services: Services) -> None:
    """Add FastReads as the innermost user middleware (call from create_app after the routes, before the app
    starts); /jobs only where its routes are mounted."""
    from ims.api.app import ROUTER_HOOKS  # loaded: create_app is calling
    from ims.api.routers import jobs as jobs_router

    jobs = jobs_router.mount in ROUTER_HOOKS
    app.user_middleware.append(Middleware(FastReads, services=services, jobs=jobs))  # type: ignore[arg-type]

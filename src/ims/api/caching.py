"""Encoded GET responses kept per collection version, and conditional requests (`ETag`, `If-None-Match`).

Every record table has a version in the database that a trigger bumps in the same transaction as any change
the API would show (migration 0004), whoever writes: this process, another worker process, another replica,
the task or job worker, an import. A GET first reads that version (microseconds on SQLite), then answers from
this process's cache when an entry of that version exists: the stored bytes, no query of the records, no
per-record objects. Otherwise one fill reads the records through the service, encodes them exactly as
before (orjson, the same bytes) and files them under the version read *before* the records, so an entry can
hold newer data than its version but never older: it is never served stale.

The ETag is a hash of the body: equal bytes have equal ETags in every process, and any change of the bytes
changes it. `If-None-Match` with a matching tag (or `*`) answers 304 with no body.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ims.api.deps import services
from ims.store.versions import VersionReader

# Per process; a list of 10,000 images is about 1.8 MB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Entry:
    version: int
    body: bytes
    etag: str

    @classmethod
    def encode(cls, version: int, content: Any) -> Entry:
        # The same rendering as ims.api.http.FastJSONResponse, so the bytes on the wire do not change.
        body = orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        return cls(version, body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"')


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


class ResponseCache:
    def __init__(self, versions: VersionReader, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.versions = versions
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, Hashable], Entry] = OrderedDict()
        self._size = 0
        self._filling: dict[tuple[str, Hashable, int], asyncio.Future[Entry]] = {}

    async def version(self, collection: str) -> int:
        if self.versions.fast:
            return self.versions.read(collection)
        return await run_in_threadpool(self.versions.read, collection)

    async def get(self, collection: str, key: Hashable, load: Callable[[], Any]) -> Entry:
        """The entry of `collection`'s current version for `key`; `load` (blocking, run in a thread) gives the
        content on a miss. Concurrent misses of one key and version share one fill."""
        version = await self.version(collection)
        slot = (collection, key)
        entry = self._entries.get(slot)
        if entry is not None and entry.version == version:
            self._entries.move_to_end(slot)
            return entry
        filling = self._filling.get((collection, key, version))
        if filling is None:
            filling = asyncio.ensure_future(run_in_threadpool(_encode_loaded, version, load))
            self._filling[(collection, key, version)] = filling
            filling.add_done_callback(lambda done: self._filled(slot, version, done))
        return await asyncio.shield(filling)

    def _filled(self, slot: tuple[str, Hashable], version: int, done: asyncio.Future[Entry]) -> None:
        self._filling.pop((slot[0], slot[1], version), None)
        if done.cancelled() or done.exception() is not None:
            return
        entry = done.result()
        current = self._entries.get(slot)
        if current is not None and current.version > entry.version:
            return
        if current is not None:
            self._size -= len(current.body)
        if len(entry.body) > self.max_bytes // 4:
            self._entries.pop(slot, None)
            return
        self._entries[slot] = entry
        self._entries.move_to_end(slot)
        self._size += len(entry.body)
        while self._size > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped.body)

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0


def _encode_loaded(version: int, load: Callable[[], Any]) -> Entry:
    return Entry.encode(version, load())


def response_cache(request: Request) -> ResponseCache:
    found = services(request)
    cache = found.extra.get("response_cache")
    if cache is None:
        cache = found.extra.setdefault("response_cache", ResponseCache(VersionReader(found.ctx.database)))
    return cache  # type: ignore[no-any-return]


async def cached(request: Request, collection: str, key: Hashable, load: Callable[[], Any]) -> Response:
    """A GET answered from the cache of `collection` (a record table's name), with ETag and 304."""
    return respond(request, await response_cache(request).get(collection, key, load))

"""A job's log file: the stages' output with the worker's own lines between, read whole or followed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

CHUNK = 64 * 1024


def append_line(path: Path, message: str) -> None:
    """Add one `ims:` line; nothing is written once the job directory is gone (the job was deleted)."""
    if not path.parent.is_dir():
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{stamp} ims: {message}\n")


def read_from(path: Path, offset: int, size: int = CHUNK) -> bytes:
    try:
        with path.open("rb") as source:
            source.seek(offset)
            return source.read(size)
    except FileNotFoundError:
        return b""


async def stream(
    path: Path, *, follow: bool, finished: Callable[[], bool], poll_seconds: float = 0.5
) -> AsyncIterator[bytes]:
    """The log from its start; with `follow`, keep sending what is appended until `finished()` says so."""
    offset = 0
    while True:
        data = await anyio.to_thread.run_sync(read_from, path, offset)
        if data:
            offset += len(data)
            yield data
            continue
        if not follow:
            return
        if await anyio.to_thread.run_sync(finished):
            # Whatever was written between the last read and the check still goes out.
            while data := await anyio.to_thread.run_sync(read_from, path, offset):
                offset += len(data)
                yield data
            return
        await anyio.sleep(poll_seconds)

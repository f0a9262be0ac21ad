"""Stream a (presigned) URL to a file with retries, resuming where a broken transfer stopped."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from ims.stages.reporting import Reporter, StageError

_FATAL_STATUSES = frozenset(range(400, 500)) - {408, 425, 429}


class _Retryable(Exception):
    pass


class _BackgroundMd5:
    """Hash in a second thread: hashlib drops the GIL on large updates, so the md5 overlaps the transfer."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._md5 = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
        self._thread = threading.Thread(target=self._run, name="ims-md5", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._md5.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._md5.hexdigest()


def redact_url(url: str) -> str:
    """A presigned URL's query is its credential: never print it."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def download(
    url: str,
    dest: Path,
    reporter: Reporter,
    *,
    attempts: int = 20,
    retry_seconds: float = 10.0,
    verify: bool | str = True,
) -> tuple[str, int]:
    """Download to `dest`; return (md5 hex, size). The md5 is taken while the bytes arrive."""
    shown = redact_url(url)
    hasher = _BackgroundMd5()
    written = 0
    timeout = httpx.Timeout(60.0, connect=30.0)
    with httpx.Client(verify=verify, timeout=timeout, follow_redirects=True) as http, dest.open("wb") as out:
        for attempt in range(1, attempts + 1):
            headers = {"Range": f"bytes={written}-"} if written else {}
            try:
                with http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 206 and written:
                        pass  # the server continues where the last attempt broke off
                    elif response.status_code == 200:
                        if written:
                            out.seek(0)
                            out.truncate()
                            hasher.hexdigest()  # ends the old thread
                            hasher = _BackgroundMd5()
                            written = 0
                    elif response.status_code in _FATAL_STATUSES:
                        raise StageError(f"download of {shown} refused: HTTP {response.status_code}")
                    else:
                        raise _Retryable(f"HTTP {response.status_code}")
                    # No re-chunking (iter_bytes(size) copies every byte once more).
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                return hasher.hexdigest(), written
            except (httpx.TransportError, _Retryable) as exc:
                reason = _describe(exc)
                if attempt >= attempts:
                    raise StageError(f"download of {shown} failed after {attempts} attempts: {reason}") from None
                reporter.say(
                    f"download attempt {attempt}/{attempts} failed at {written} bytes: {reason}; "
                    f"retrying in {retry_seconds:g} s"
                )
                time.sleep(retry_seconds)
    raise StageError(f"download of {shown} failed")  # unreachable: the loop returns or raises


def _describe(exc: Exception) -> str:
    # httpx puts the full URL (with its signature) into some messages; keep only the class and the gist.
    text = str(exc).split(" for url ")[0]
    if "X-Amz-" in text or "Signature=" in text:
        text = ""
    return f"{type(exc).__name__}{': ' + text if text else ''}"

"""Stream a (presigned) URL to a file with retries, resuming where a broken transfer stopped."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from ims.stages.reporting import Reporter, StageError

CHUNK = 1024 * 1024
_FATAL_STATUSES = frozenset(range(400, 500)) - {408, 425, 429}


class _Retryable(Exception):
    pass


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
    hasher = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
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
                            hasher = hashlib.md5()  # noqa: S324
                            written = 0
                    elif response.status_code in _FATAL_STATUSES:
                        raise StageError(f"download of {shown} refused: HTTP {response.status_code}")
                    else:
                        raise _Retryable(f"HTTP {response.status_code}")
                    for chunk in response.iter_bytes(CHUNK):
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

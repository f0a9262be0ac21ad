"""Stream a (presigned) URL to a file with retries, resuming where a broken transfer stopped."""

from __future__ import annotations

import hashlib
import http.client
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter, StageError

_FATAL_STATUSES = frozenset(range(400, 500)) - {408, 425, 429}
_CHUNK = 1024 * 1024
_TIMEOUT = 60.0


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


def fetch_job_artifact(env: JobEnvironment, target: Path, reporter: Reporter, what: str) -> str:
    """Download the job's DOWNLOAD_URL to `target` and check DOWNLOAD_MD5SUM; returns the md5."""
    if not env.download_url:
        raise StageError("DOWNLOAD_URL is not set")
    verify = env.s3.verify if env.s3 is not None else (env.ca_cert or True)
    start = time.monotonic()
    md5, size = download(
        env.download_url,
        target,
        reporter,
        attempts=env.download_attempts,
        retry_seconds=env.download_retry_seconds,
        verify=verify,
    )
    seconds = max(time.monotonic() - start, 1e-6)
    reporter.say(f"downloaded {what}: {size} bytes in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s), md5 {md5}")
    if env.download_md5sum and md5 != env.download_md5sum:
        target.unlink(missing_ok=True)
        raise StageError(f"md5 mismatch for the {what}: expected {env.download_md5sum}, got {md5}")
    return md5


def redact_url(url: str) -> str:
    """A presigned URL's query is its credential: never print it."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    if verify is False:
        return ssl._create_unverified_context()  # noqa: S323 - the operator turned verification off
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def download(
    url: str,
    dest: Path,
    reporter: Reporter,
    *,
    attempts: int = 20,
    retry_seconds: float = 10.0,
    verify: bool | str = True,
) -> tuple[str, int]:
    """Download to `dest`; return (md5 hex, size). The md5 is taken while the bytes arrive.

    The standard library's http.client is used on purpose: on 600 MB it moved bytes about twice as fast
    as httpx's streaming here, close to curl.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise StageError(f"download URL {redact_url(url)} is not http(s)")
    shown = redact_url(url)
    context = _ssl_context(verify)
    hasher = _BackgroundMd5()
    written = 0
    with dest.open("wb") as out:
        for attempt in range(1, attempts + 1):
            headers = {"Range": f"bytes={written}-"} if written else {}
            try:
                request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
                with urllib.request.urlopen(request, timeout=_TIMEOUT, context=context) as response:  # noqa: S310
                    if written and response.status != 206:  # the server ignored the range: start over
                        out.seek(0)
                        out.truncate()
                        hasher.hexdigest()  # ends the old thread
                        hasher = _BackgroundMd5()
                        written = 0
                    expected = _expected_total(response)
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                    # http.client's read(n) treats a connection closed early as a normal end of body.
                    if expected is not None and written != expected:
                        raise http.client.IncompleteRead(b"", expected - written)
                return hasher.hexdigest(), written
            except urllib.error.HTTPError as exc:
                if exc.code in _FATAL_STATUSES:
                    raise StageError(f"download of {shown} refused: HTTP {exc.code}") from None
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = _describe(exc)
            if attempt >= attempts:
                raise StageError(f"download of {shown} failed after {attempts} attempts: {reason}")
            reporter.say(
                f"download attempt {attempt}/{attempts} failed at {written} bytes: {reason}; "
                f"retrying in {retry_seconds:g} s"
            )
            time.sleep(retry_seconds)
    raise StageError(f"download of {shown} failed")  # unreachable: the loop returns or raises


def _expected_total(response: http.client.HTTPResponse) -> int | None:
    """Size of the whole object once this response is read, when the headers say so."""
    if response.status == 206:
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _describe(exc: Exception) -> str:
    # Some messages quote the URL, signature and all: drop those, keep the class and the gist.
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    text = str(reason)
    if "X-Amz-" in text or "Signature=" in text or "?" in text:
        text = ""
    return f"{type(reason).__name__}{': ' + text if text else ''}"

"""Fetch a (presigned) URL to a file: parallel ranged GETs, md5 on the way, resume and re-sign on failure.

How the job's input arrives at the speed of the machine:
- the object is fetched as blocks of BLOCK bytes by STREAMS kept-alive connections at once (ranged GETs,
  written in place with pwrite); one TCP stream alone was about 2.5× slower than the disk and network allow;
- the md5 the contract checks (DOWNLOAD_MD5SUM) is taken while the blocks arrive, in order, in its own
  thread (hashlib drops the GIL), so the file is never read a second time. When the object's ETag is a
  single-part ETag (32 hex digits, no `-N`), S3 computed it as the md5 of the stored bytes: if it equals the
  expected md5 no hashing is needed at all (each block's length and ETag are still checked). A multipart
  ETag (`…-N`) says nothing about the whole object's md5 and is never trusted that way;
- a block whose connection broke is asked for again from the byte where it stopped; a URL that S3 refuses
  with 403 (the presigned URL expired: a job may wait long before it runs) is signed anew by IMS
  (`GET /v3/jobs/{id}/input`, with the job's token) and the transfer goes on where it was.
A server that ignores ranges (200 to a ranged GET) is read as one stream, resumed the same way when it can.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ims.client.http import ImsApiError, ImsClient
from ims.client.job_uploads import JobArtifactApi, UploadError, is_md5_etag, ssl_context
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import Reporter, StageError

_FATAL_STATUSES = frozenset(range(400, 500)) - {403, 408, 425, 429}
_CHUNK = 1024 * 1024
_TIMEOUT = 60.0
BLOCK = 16 * 1024 * 1024
STREAMS = 4
KEEP = 128 * 1024 * 1024  # bytes of blocks held in memory for the in-order md5 at most

Resign = Callable[[], str]
# Where the bytes go: a path, or a function that is given the object's size once the first answer told it (None
# when the server did not say) and returns the path (ims.stages.scratch chooses memory or disk by the size).
Destination = Path | Callable[[int | None], Path]


class _Refused(Exception):
    """A status that no retry will fix."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _Retry(Exception):
    """A failure worth another attempt (transport, 5xx, 403 before re-signing)."""

    def __init__(self, reason: str, status: int = 0, version: int = -1) -> None:
        super().__init__(reason)
        self.status = status
        self.version = version  # of the URL that was refused (403)


def fetch_job_artifact(
    env: JobEnvironment,
    target: Destination,
    reporter: Reporter,
    what: str,
    meanwhile: Callable[[], None] | None = None,
) -> str:
    """Download the job's DOWNLOAD_URL to `target` and check DOWNLOAD_MD5SUM; returns the md5.

    `meanwhile` (prepare's unsquashfs) runs once the last byte is written, while the md5 may still be
    finishing; the md5 is checked before this returns either way, and a mismatch wins over its failure
    (unsquashfs of a damaged archive fails too, but the mismatch is the reason). The caller removes the
    download, and what `meanwhile` made when this raises.
    """
    if not env.download_url:
        raise StageError("DOWNLOAD_URL is not set")
    start = time.monotonic()
    result = download(
        env.download_url,
        target,
        reporter,
        attempts=env.download_attempts,
        retry_seconds=env.download_retry_seconds,
        verify=env.s3_verify,
        resign=job_input_resigner(env),
        expected_md5=env.download_md5sum,
    )
    seconds = max(time.monotonic() - start, 1e-6)
    size = result.size
    reporter.say(f"downloaded {what}: {size} bytes in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s)")
    failure: Exception | None = None
    if meanwhile is not None:
        try:
            meanwhile()
        except Exception as exc:
            failure = exc
    waited = time.monotonic()
    md5 = result.md5()
    reporter.say(f"md5 of the {what}: {md5} ({result.md5_source}; waited {time.monotonic() - waited:.2f} s for it)")
    if env.download_md5sum and md5 != env.download_md5sum:
        raise StageError(f"md5 mismatch for the {what}: expected {env.download_md5sum}, got {md5}")
    if failure is not None:
        raise failure
    return md5


def job_input_resigner(env: JobEnvironment) -> Resign | None:
    """A fresh presigned URL of the job's input from IMS (the job's token), for when DOWNLOAD_URL expired."""
    if not env.ims_url:
        return None

    def resign() -> str:
        with ImsClient(env.ims_url, token=env.ims_token or None, verify=env.ca_cert or True) as client:
            try:
                return JobArtifactApi(client, env.job_id).input().url
            except (ImsApiError, UploadError) as exc:
                raise StageError(f"the download URL was refused and IMS gave no new one: {exc}") from exc

    return resign


def redact_url(url: str) -> str:
    """A presigned URL's query is its credential: never print it."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class Downloaded:
    """What arrived; `md5()` waits for the hash, which may still run when the last byte is written."""

    def __init__(self, size: int, md5_source: str, digest: Callable[[], str]) -> None:
        self.size = size
        self.md5_source = md5_source
        self._digest = digest
        self._md5: str | None = None

    def md5(self) -> str:
        if self._md5 is None:
            self._md5 = self._digest()
        return self._md5


class _Source:
    """The URL (re-signed when S3 refuses it) and one kept-alive connection per thread."""

    def __init__(self, url: str, verify: bool | str, resign: Resign | None, reporter: Reporter) -> None:
        self.url = url
        self.version = 0
        self.shown = redact_url(url)
        self._resign = resign
        self._reporter = reporter
        self._context = ssl_context(verify)
        self._lock = threading.Lock()
        self._local = threading.local()
        self.resigned = 0

    def renew(self, seen_version: int) -> bool:
        """Ask IMS for a new URL (once per expiry, whatever the thread count); False when none can be had."""
        if self._resign is None:
            return False
        with self._lock:
            if self.version != seen_version:
                return True  # another thread did it meanwhile
            self._reporter.say(f"the download URL of {self.shown} was refused (expired?): asking IMS for a new one")
            self.url = self._resign()
            self.version += 1
            self.resigned += 1
            return True

    def _connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        key = (parts.scheme, parts.netloc)
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None or getattr(self._local, "key", None) != key:
            if connection is not None:
                connection.close()
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(parts.netloc, timeout=_TIMEOUT, context=self._context)
            else:
                connection = http.client.HTTPConnection(parts.netloc, timeout=_TIMEOUT)
            self._local.connection, self._local.key = connection, key
        return connection

    def drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def get(self, first: int, last: int | None) -> tuple[http.client.HTTPResponse, int]:
        """Send a ranged GET; returns the open response and the URL version it used. Raises _Retry/_Refused."""
        version = self.version
        parts = urlsplit(self.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Range": f"bytes={first}-{'' if last is None else last}"}
        connection = self._connection()
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.drop()
            raise _Retry(_describe(exc)) from None
        if response.status in (200, 206):
            return response, version
        response.read()
        if response.status == 403:
            raise _Retry("HTTP 403", 403, version)
        if response.status in _FATAL_STATUSES:
            raise _Refused(response.status)
        raise _Retry(f"HTTP {response.status}", response.status)


class _Attempts:
    """The retry budget of one download: `attempts` failures in a row end it."""

    def __init__(self, source: _Source, reporter: Reporter, attempts: int, retry_seconds: float) -> None:
        self.source = source
        self.reporter = reporter
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._failures = 0
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            self._failures = 0

    def failed(self, exc: _Retry, at: int) -> None:
        """Count a failure; re-sign on 403; sleep before the next attempt; raise StageError when spent."""
        with self._lock:
            self._failures += 1
            failures = self._failures
        if exc.status == 403:
            if not self.source.renew(exc.version):
                raise StageError(f"download of {self.source.shown} refused: HTTP 403")
            if failures < self.attempts:
                return  # a new URL: try again at once
        if failures >= self.attempts:
            raise StageError(f"download of {self.source.shown} failed after {self.attempts} attempts: {exc}")
        self.reporter.say(
            f"download attempt {failures}/{self.attempts} failed at {at} bytes: {exc}; "
            f"retrying in {self.retry_seconds:g} s"
        )
        time.sleep(self.retry_seconds)


class _InOrderMd5:
    """md5 of the blocks in order, in its own thread, without ever holding the download back.

    Blocks arrive in any order. Up to KEEP bytes of them wait in memory for their turn; a block that arrives
    when that is full is only written to the file, and the hash reads it back from there when its turn comes
    (from the page cache: it was written a moment before). So the transfer runs at the network's speed even
    when the hash is slower (md5 does 250-470 MiB/s on one CPU here), and the hash may finish after the last
    byte arrived, while unsquashfs already runs (see fetch_job_artifact).
    """

    def __init__(self, path: Path, block: int, total: int) -> None:
        self._md5 = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
        self._block = block
        self._total = total
        self._count = max(1, -(-total // block))
        self._held: dict[int, bytes | bytearray] = {}
        self._held_bytes = 0
        self._on_disk: set[int] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._error: BaseException | None = None
        self._fd = os.open(path, os.O_RDONLY)
        self.read_back = 0
        self._thread = threading.Thread(target=self._run, name="ims-md5", daemon=True)
        self._thread.start()

    def add(self, index: int, data: bytes | bytearray) -> None:
        with self._cond:
            if self._held_bytes + len(data) <= KEEP:
                self._held[index] = data
                self._held_bytes += len(data)
            else:
                self._on_disk.add(index)
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            for index in range(self._count):
                with self._cond:
                    while index not in self._held and index not in self._on_disk and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    data = self._held.pop(index, None)
                    if data is not None:
                        self._held_bytes -= len(data)
                if data is None:
                    start = index * self._block
                    length = min(self._block, self._total - start)
                    data = _pread_all(self._fd, length, start)
                    self.read_back += len(data)
                self._md5.update(data)  # outside the lock: hashlib drops the GIL, the download goes on
        except BaseException as exc:
            self._error = exc
        finally:
            os.close(self._fd)

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise StageError(f"could not hash the download: {self._error}")
        return self._md5.hexdigest()

    def abandon(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise StageError("the downloaded file is shorter than what was written")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def download(
    url: str,
    dest: Destination,
    reporter: Reporter,
    *,
    attempts: int = 20,
    retry_seconds: float = 10.0,
    verify: bool | str = True,
    resign: Resign | None = None,
    expected_md5: str = "",
    streams: int = STREAMS,
    block: int = BLOCK,
) -> Downloaded:
    """Download to `dest`; return the md5 (taken while the bytes arrive, or a matching single-part ETag)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise StageError(f"download URL {redact_url(url)} is not http(s)")
    source = _Source(url, verify, resign, reporter)
    budget = _Attempts(source, reporter, max(1, attempts), retry_seconds)
    # The first block tells the size and ETag, and whether the server takes ranges at all.
    while True:
        try:
            response, _ = source.get(0, block - 1)
            break
        except _Refused as exc:
            raise StageError(f"download of {source.shown} refused: HTTP {exc.status}") from None
        except _Retry as exc:
            budget.failed(exc, 0)
    total = _length(response) if response.status == 200 else _content_range_total(response)
    path = dest(total) if callable(dest) else dest
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if response.status == 200:
            return _single_stream(source, budget, response, fd)
        etag = (response.getheader("ETag") or "").strip().strip('"')
        if total is None:
            response.close()
            source.drop()
            raise StageError(f"download of {source.shown}: a ranged answer without a size")
        trusted = bool(expected_md5) and is_md5_etag(etag) and etag.lower() == expected_md5.lower()
        blocks = max(1, -(-total // block))
        hasher = None if trusted else _InOrderMd5(path, block, total)
        fetcher = _Blocks(source, budget, fd, total, block, etag, hasher)
        try:
            fetcher.first(response)
            fetcher.run(blocks, streams)
        except BaseException:
            if hasher is not None:
                hasher.abandon()
            raise
        if hasher is None:
            return Downloaded(total, "the object's single-part ETag", lambda: etag.lower())
        return Downloaded(total, "hashed while downloading", hasher.result)
    finally:
        os.close(fd)


class _Blocks:
    def __init__(
        self,
        source: _Source,
        budget: _Attempts,
        fd: int,
        total: int,
        block: int,
        etag: str,
        hasher: _InOrderMd5 | None,
    ) -> None:
        self.source = source
        self.budget = budget
        self.fd = fd
        self.total = total
        self.block = block
        self.etag = etag
        self.hasher = hasher
        self._next = 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def _range(self, index: int) -> tuple[int, int]:
        start = index * self.block
        return start, min(start + self.block, self.total)

    def first(self, response: http.client.HTTPResponse) -> None:
        self._fetch(0, response)

    def run(self, blocks: int, streams: int) -> None:
        if blocks > 1:
            threads = [
                threading.Thread(target=self._worker, args=(blocks,), name=f"ims-get-{n}", daemon=True)
                for n in range(min(streams, blocks - 1))
            ]
            for thread in threads:
                thread.start()
            try:
                for thread in threads:
                    while thread.is_alive():
                        thread.join(0.5)
            except BaseException:
                self._stop.set()  # a SIGTERM in the main thread: let the workers end
                raise
        if self._error is not None:
            raise self._error

    def _worker(self, blocks: int) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    index = self._next
                    if index >= blocks:
                        return
                    self._next += 1
                self._fetch(index, None)
        except BaseException as exc:
            with self._lock:
                if self._error is None:
                    self._error = exc
            self._stop.set()
        finally:
            self.source.drop()

    def _fetch(self, index: int, response: http.client.HTTPResponse | None) -> None:
        """Fetch block `index` into the file (and the hash), resuming a broken block where it stopped."""
        start, end = self._range(index)
        buffer = bytearray(end - start)
        view = memoryview(buffer)
        got = 0
        while got < len(buffer):
            if self._stop.is_set():
                return
            try:
                if response is None:
                    try:
                        response, _ = self.source.get(start + got, end - 1)
                    except _Refused as exc:
                        raise StageError(f"download of {self.source.shown} refused: HTTP {exc.status}") from None
                    self._check(response)
                while got < len(buffer):
                    read = response.readinto(view[got : min(got + _CHUNK, len(buffer))])
                    if not read:
                        raise _Retry("the connection closed early")
                    got += read
                    self.budget.ok()
                response.read()  # nothing is left; keeps the connection reusable
            except _Retry as exc:
                self.source.drop()
                response = None
                self.budget.failed(exc, start + got)
            except (OSError, http.client.HTTPException) as exc:
                self.source.drop()
                response = None
                self.budget.failed(_Retry(_describe(exc)), start + got)
        done = 0
        while done < len(buffer):
            done += os.pwrite(self.fd, view[done:], start + done)
        if self.hasher is not None:
            self.hasher.add(index, buffer)

    def _check(self, response: http.client.HTTPResponse) -> None:
        if response.status != 206:
            response.read()
            raise _Retry(f"HTTP {response.status} to a ranged request")
        total = _content_range_total(response)
        etag = (response.getheader("ETag") or "").strip().strip('"')
        if total != self.total or (self.etag and etag and etag != self.etag):
            response.read()
            raise StageError(f"{self.source.shown} changed while it was downloaded")


def _single_stream(source: _Source, budget: _Attempts, response: http.client.HTTPResponse, fd: int) -> Downloaded:
    """A server that ignores ranges: one stream, hashed as it comes; resumed with a range when allowed."""
    md5 = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
    written = 0
    expected = _length(response)
    while True:
        try:
            while chunk := response.read(_CHUNK):
                os.write(fd, chunk)
                md5.update(chunk)
                written += len(chunk)
                budget.ok()
            # http.client's read(n) treats a connection closed early as a normal end of body.
            if expected is not None and written != expected:
                raise _Retry("the connection closed early")
            return Downloaded(written, "hashed while downloading", md5.copy().hexdigest)
        except (_Retry, OSError, http.client.HTTPException) as exc:
            source.drop()
            reason = exc if isinstance(exc, _Retry) else _Retry(_describe(exc))
            budget.failed(reason, written)
        while True:
            try:
                response, _ = source.get(written, None)
                break
            except _Refused as exc:
                raise StageError(f"download of {source.shown} refused: HTTP {exc.status}") from None
            except _Retry as exc:
                budget.failed(exc, written)
        if response.status == 200:  # the range was ignored: start over
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            md5 = hashlib.md5()  # noqa: S324
            written = 0
            expected = _length(response)
        else:
            total = _content_range_total(response)
            expected = total


def _length(response: http.client.HTTPResponse) -> int | None:
    length = response.getheader("Content-Length")
    return int(length) if length and length.isdigit() else None


def _content_range_total(response: http.client.HTTPResponse) -> int | None:
    total = (response.getheader("Content-Range") or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _describe(exc: BaseException) -> str:
    # Some messages quote the URL, signature and all: drop those, keep the class and the gist.
    text = str(exc)
    if "X-Amz-" in text or "Signature=" in text or "?" in text:
        text = ""
    return f"{type(exc).__name__}{': ' + text if text else ''}"

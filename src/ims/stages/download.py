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
from dataclasses import dataclass
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
WINDOW = 2 * STREAMS  # blocks held in memory for the in-order md5 at most

Resign = Callable[[], str]


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


def fetch_job_artifact(env: JobEnvironment, target: Path, reporter: Reporter, what: str) -> str:
    """Download the job's DOWNLOAD_URL to `target` and check DOWNLOAD_MD5SUM; returns the md5."""
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
    reporter.say(
        f"downloaded {what}: {size} bytes in {seconds:.2f} s ({size / seconds / 1e6:.1f} MB/s), md5 {result.md5}"
        f" ({result.md5_source})"
    )
    if env.download_md5sum and result.md5 != env.download_md5sum:
        target.unlink(missing_ok=True)
        raise StageError(f"md5 mismatch for the {what}: expected {env.download_md5sum}, got {result.md5}")
    return result.md5


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


@dataclass(frozen=True)
class Downloaded:
    md5: str
    size: int
    md5_source: str


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
    """md5 of blocks handed in any order, hashed in order in a thread; bounds the blocks held in memory."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
        self._blocks: dict[int, bytes | bytearray] = {}
        self._next = 0
        self._cond = threading.Condition()
        self._total: int | None = None
        self._thread = threading.Thread(target=self._run, name="ims-md5", daemon=True)
        self._thread.start()

    def may_fetch(self, index: int, stop: threading.Event) -> bool:
        """Wait until block `index` is within the window ahead of the hash (False when stopping)."""
        with self._cond:
            while index >= self._next + WINDOW and not stop.is_set():
                self._cond.wait(0.2)
            return not stop.is_set()

    def add(self, index: int, data: bytes | bytearray) -> None:
        with self._cond:
            self._blocks[index] = data
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._next not in self._blocks and (self._total is None or self._next < self._total):
                    self._cond.wait()
                if self._total is not None and self._next >= self._total:
                    return
                data = self._blocks.pop(self._next)
            self._md5.update(data)  # outside the lock: other threads go on meanwhile
            with self._cond:
                self._next += 1
                self._cond.notify_all()

    def finish(self, blocks: int) -> str:
        with self._cond:
            self._total = blocks
            self._cond.notify_all()
        self._thread.join()
        return self._md5.hexdigest()

    def abandon(self) -> None:
        with self._cond:
            self._total = 0
            self._cond.notify_all()


def download(
    url: str,
    dest: Path,
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
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # The first block tells the size and ETag, and whether the server takes ranges at all.
        while True:
            try:
                response, _ = source.get(0, block - 1)
                break
            except _Refused as exc:
                raise StageError(f"download of {source.shown} refused: HTTP {exc.status}") from None
            except _Retry as exc:
                budget.failed(exc, 0)
        if response.status == 200:
            return _single_stream(source, budget, response, fd)
        total = _content_range_total(response)
        etag = (response.getheader("ETag") or "").strip().strip('"')
        if total is None:
            response.close()
            source.drop()
            raise StageError(f"download of {source.shown}: a ranged answer without a size")
        trusted = bool(expected_md5) and is_md5_etag(etag) and etag.lower() == expected_md5.lower()
        blocks = max(1, -(-total // block))
        fetcher = _Blocks(source, budget, fd, total, block, etag, None if trusted else _InOrderMd5())
        fetcher.first(response)
        fetcher.run(blocks, streams)
        if trusted:
            return Downloaded(etag.lower(), total, "the object's single-part ETag")
        assert fetcher.hasher is not None
        return Downloaded(fetcher.hasher.finish(blocks), total, "hashed while downloading")
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
                if self.hasher is not None:
                    self.hasher.abandon()
                raise
        if self._error is not None:
            if self.hasher is not None:
                self.hasher.abandon()
            raise self._error

    def _worker(self, blocks: int) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    index = self._next
                    if index >= blocks:
                        return
                    self._next += 1
                if self.hasher is not None and not self.hasher.may_fetch(index, self._stop):
                    return
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
            return Downloaded(md5.hexdigest(), written, "hashed while downloading")
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

"""A job's artifacts through IMS's presigned URLs: no S3 credentials in the job.

The job holds only its bearer token (IMS_JOB_TOKEN). IMS hands out, for exactly the job's own keys:
- `GET /v3/jobs/{id}/input`: a fresh presigned GET of the job's input (when DOWNLOAD_URL expired);
- `POST /v3/jobs/{id}/uploads` → an S3 multipart upload to `<image_id>/<name>` in the boot-images bucket;
- `POST .../uploads/{upload_id}/parts` → presigned UploadPart PUT URLs (a part may be PUT again);
- `POST .../uploads/{upload_id}/complete` with the parts' ETags, the object's md5 and extra metadata: IMS
  completes the upload and stores `md5sum` on the object, so it looks exactly like an upload with credentials;
- `DELETE .../uploads/{upload_id}`: abort.

`FileUpload` uploads one file, also while another process is still writing it (mksquashfs): parts go up as
the file grows, and one sequential pass after the writer finished takes the md5 and checks each part sent
early against the final bytes, sending again any part that changed (see `FileUpload.finish`).
`JobArtifactSink` offers the methods `ims.client.artifacts` uses of an S3 store (upload_file, put_bytes,
discard_image_objects), so the ims-python-helper sequence (record, artifacts, manifest, link) runs unchanged inside a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ims.client.http import ImsApiError, ImsClient
from ims.domain.links import S3Location

MiB = 1024 * 1024
# Part 1 holds the squashfs superblock, which mksquashfs writes last: it is kept small and sent only once the
# file is final. Every other part is 64 MiB (the project's S3 part size); S3 allows 10,000 parts (≈ 640 GB).
FIRST_PART_SIZE = 8 * MiB
PART_SIZE = 64 * MiB
MAX_PARTS = 10_000
URL_BATCH = 16  # part URLs asked for at a time (the API allows 100)
THREADS = 4  # parallel part PUTs: what saturated SeaweedFS here, as boto3's default transfer does
PUT_ATTEMPTS = 5
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class UploadError(Exception):
    """An upload through IMS's presigned URLs could not be finished."""


@dataclass(frozen=True)
class InputArtifact:
    url: str = field(repr=False)
    md5: str
    path: str


@dataclass(frozen=True)
class CompletedUpload:
    bucket: str
    key: str
    etag: str
    size: int
    md5: str


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    if verify is False:
        return ssl._create_unverified_context()  # noqa: S323 - the operator turned verification off
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


class JobArtifactApi:
    """The job-side calls of IMS's input and upload endpoints (bearer: the job's token)."""

    def __init__(self, client: ImsClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id

    def _path(self, suffix: str) -> str:
        return f"/v3/jobs/{self.job_id}{suffix}"

    def input(self) -> InputArtifact:
        body = self.client.request("GET", self._path("/input"))
        if not isinstance(body, dict) or not body.get("url"):
            raise UploadError("IMS did not return an input URL")
        return InputArtifact(str(body["url"]), str(body.get("md5") or ""), str(body.get("path") or ""))

    def create(self, image_id: str, name: str, content_type: str | None = None) -> tuple[str, str, str]:
        request: dict[str, Any] = {"image_id": image_id, "name": name}
        if content_type:
            request["content_type"] = content_type
        body = self.client.request("POST", self._path("/uploads"), json=request)
        if not isinstance(body, dict) or not body.get("upload_id"):
            raise UploadError(f"IMS did not start an upload of {image_id}/{name}")
        return str(body["upload_id"]), str(body.get("bucket") or ""), str(body.get("key") or "")

    def part_urls(self, upload_id: str, numbers: list[int]) -> dict[int, str]:
        body = self.client.request("POST", self._path(f"/uploads/{upload_id}/parts"), json={"part_numbers": numbers})
        urls: dict[int, str] = {}
        for item in (body or {}).get("part_urls", []) if isinstance(body, dict) else []:
            urls[int(item["part_number"])] = str(item["url"])
        missing = set(numbers) - set(urls)
        if missing:
            raise UploadError(f"IMS returned no URL for parts {sorted(missing)[:5]}")
        return urls

    def complete(
        self, upload_id: str, parts: list[tuple[int, str]], md5sum: str, metadata: Mapping[str, str] | None
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "parts": [{"part_number": number, "etag": etag} for number, etag in parts],
            "md5sum": md5sum,
        }
        if metadata:
            request["metadata"] = dict(metadata)
        body = self.client.request("POST", self._path(f"/uploads/{upload_id}/complete"), json=request)
        if not isinstance(body, dict):
            raise UploadError("IMS answered the completion of an upload without a body")
        return body

    def abort(self, upload_id: str) -> None:
        self.client.request("DELETE", self._path(f"/uploads/{upload_id}"))


class PartPutter:
    """PUTs bodies to presigned URLs over one kept-alive connection per thread (http.client: close to curl)."""

    def __init__(self, verify: bool | str = True, timeout: float = 120.0) -> None:
        self._context = ssl_context(verify)
        self._timeout = timeout
        self._local = threading.local()

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        held: dict[tuple[str, str], http.client.HTTPConnection] = getattr(self._local, "connections", None) or {}
        self._local.connections = held
        if key not in held:
            if scheme == "https":
                held[key] = http.client.HTTPSConnection(netloc, timeout=self._timeout, context=self._context)
            else:
                held[key] = http.client.HTTPConnection(netloc, timeout=self._timeout)
        return held[key]

    def _drop(self, scheme: str, netloc: str) -> None:
        held = getattr(self._local, "connections", {})
        connection = held.pop((scheme, netloc), None)
        if connection is not None:
            connection.close()

    def put(self, url: str, body: bytes | memoryview) -> tuple[int, str, str]:
        """One PUT; returns (status, ETag without quotes, error text). Transport errors raise OSError."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection = self._connection(parts.scheme, parts.netloc)
        try:
            connection.request("PUT", target, body=body, headers={"Content-Length": str(len(body))})
            response = connection.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(parts.scheme, parts.netloc)
            raise OSError(f"{type(exc).__name__}: {exc}") from None
        if response.getheader("Connection", "").lower() == "close":
            self._drop(parts.scheme, parts.netloc)
        etag = (response.getheader("ETag") or "").strip().strip('"')
        return response.status, etag, text[:300].decode("utf-8", "replace")


@dataclass
class _Sent:
    length: int
    crc: int
    etag: str


class FileUpload:
    """Upload `path` to `<image_id>/<name>` in parts, while its writer may still be writing it.

    How a part is known to hold its final bytes: mksquashfs writes its output front to back, except that it
    writes the superblock (the first 96 bytes) last and, when a large file turns out to duplicate an earlier
    one, truncates the output back and writes on from there. So while the writer runs, a part is sent as soon
    as the file has grown a margin past its end, and a CRC-32 of what was sent is kept. Once the writer ended,
    `finish` sends part 1 (the superblock is final now) and the parts not sent yet, and meanwhile reads the
    file once, front to back: this one pass computes the md5 the contract stores (an md5 needs the bytes in
    order, and the first ones are final only at the end, so it cannot be taken while mksquashfs writes) and
    the CRC-32 of each part sent early; a part whose bytes differ from what was sent (after a truncation) goes
    up again. The pass reads from the page cache (mksquashfs just wrote the file) and overlaps the PUTs still
    running, so it costs CPU (md5: about 1.3 s per GB here) but adds no wall time unless the upload is faster.
    """

    def __init__(
        self,
        api: JobArtifactApi,
        putter: PartPutter,
        pool: ThreadPoolExecutor,
        *,
        image_id: str,
        name: str,
        path: Path,
        content_type: str = "application/octet-stream",
        first_part_size: int = FIRST_PART_SIZE,
        part_size: int = PART_SIZE,
        margin: int | None = None,
    ) -> None:
        if first_part_size < 5 * MiB or part_size < 5 * MiB:
            raise ValueError("S3 parts other than the last must be at least 5 MiB")
        self.api = api
        self.putter = putter
        self.pool = pool
        self.path = path
        self.image_id = image_id
        self.name = name
        self.first_part_size = first_part_size
        self.part_size = part_size
        # Sent early only once the file is this far past a part: a duplicate's truncation rarely reaches back
        # further (and when it does, `finish` sends the part again).
        self.margin = part_size // 4 if margin is None else margin
        self.upload_id, self.bucket, self.key = api.create(image_id, name, content_type)
        self._lock = threading.Lock()
        self._urls: dict[int, str] = {}
        self._sent: dict[int, _Sent] = {}
        self._pending: dict[int, Future[None]] = {}
        self.resent = 0
        self.early_parts = 0
        self._done = False

    # --- the part layout: part 1 = [0, first), then part_size each
    def part_range(self, number: int) -> tuple[int, int]:
        if number == 1:
            return 0, self.first_part_size
        start = self.first_part_size + (number - 2) * self.part_size
        return start, start + self.part_size

    def part_count(self, size: int) -> int:
        if size <= self.first_part_size:
            return 1
        return 1 + -(-(size - self.first_part_size) // self.part_size)

    # --- URLs
    def _url(self, number: int, *, fresh: bool = False) -> str:
        with self._lock:
            if not fresh and number in self._urls:
                return self._urls[number]
        wanted = [number] if fresh else list(range(number, min(number + URL_BATCH, MAX_PARTS + 1)))
        urls = self.api.part_urls(self.upload_id, wanted)
        with self._lock:
            self._urls.update(urls)
            return self._urls[number]

    # --- sending
    def _put(self, number: int, body: bytes) -> str:
        try:
            return put_part(self.putter, lambda fresh: self._url(number, fresh=fresh), body)
        except UploadError as exc:
            raise UploadError(f"part {number} of {self.bucket}/{self.key} could not be uploaded: {exc}") from None

    def _send(self, number: int, size: int | None) -> None:
        """In a pool thread: read part `number` from the file (then, not earlier: no buffer waits in a queue),
        keep its CRC-32, PUT it. `size` is the file's final size, or None while the writer still writes."""
        start, end = self.part_range(number)
        if size is not None:
            end = min(end, size)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            body = _pread_all(fd, end - start, start)
        finally:
            os.close(fd)
        crc = zlib.crc32(body)
        etag = self._put(number, body)
        with self._lock:
            self._sent[number] = _Sent(len(body), crc, etag)

    def _submit(self, number: int, size: int | None) -> Future[None]:
        future = self.pool.submit(self._send, number, size)
        with self._lock:
            self._pending[number] = future
        return future

    def _read_part(self, fd: int, number: int, size: int) -> bytes:
        start, end = self.part_range(number)
        return _pread_all(fd, min(end, size) - start, start)

    # --- while the writer runs
    def follow(self, running: Callable[[], bool], poll_seconds: float = 0.05) -> None:
        """Send parts 2.. while `running()` is true and the file grows past them; returns when it is false."""
        next_part = 2
        while running():
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            _, end = self.part_range(next_part)
            if size >= end + self.margin and next_part <= MAX_PARTS:
                self._raise_failed()
                # Not more than a few parts queued ahead of the PUTs: what waits is sent later, from the
                # then-current bytes.
                while self._queued() > THREADS and running():
                    time.sleep(poll_seconds)
                self._submit(next_part, None)
                self.early_parts += 1
                next_part += 1
                continue
            time.sleep(poll_seconds)

    def _queued(self) -> int:
        with self._lock:
            return sum(1 for future in self._pending.values() if not future.done())

    def _raise_failed(self) -> None:
        with self._lock:
            done = [future for future in self._pending.values() if future.done()]
        for future in done:
            future.result()  # an upload error stops the packing early

    # --- once the file is final
    def finish(self, metadata: Mapping[str, str] | None = None) -> CompletedUpload:
        """The writer ended: send what is missing, check what went early, take the md5, then complete.

        Part 1 and every part not sent yet go to the PUT threads at once (their bytes are final now); this
        thread meanwhile reads the file once, front to back, for the md5 and the CRC-32 of the parts sent
        while the writer wrote, and sends again any that differ. So the last PUTs never wait for the md5.
        """
        size = self.path.stat().st_size
        count = self.part_count(size)
        if count > MAX_PARTS:
            raise UploadError(f"{self.path} is too large for {MAX_PARTS} parts of {self.part_size} bytes")
        with self._lock:
            early = dict(self._pending)
        for number in range(1, count + 1):
            if number not in early:
                self._submit(number, size)
        md5 = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
        with self.path.open("rb") as handle:
            fd = handle.fileno()
            for number in range(1, count + 1):
                body = self._read_part(fd, number, size)
                md5.update(body)
                if number in early:
                    early[number].result()
                    sent = self._sent[number]
                    if sent.length != len(body) or sent.crc != zlib.crc32(body):
                        self.resent += 1
                        self._submit(number, size)
        digest = md5.hexdigest()
        for number in range(1, count + 1):
            self._pending[number].result()
        parts = [(number, self._sent[number].etag) for number in range(1, count + 1)]
        # Parts sent while the file was longer than it ended up are not listed, so S3 drops them.
        answer = self.api.complete(self.upload_id, parts, digest, metadata)
        self._done = True
        return CompletedUpload(
            bucket=str(answer.get("bucket") or self.bucket),
            key=str(answer.get("key") or self.key),
            etag=str(answer.get("etag") or "").strip('"'),
            size=int(answer.get("size") or size),
            md5=digest,
        )

    def abort(self) -> None:
        """Drop the upload (best effort); pending PUTs are waited for so none lands after the abort."""
        if self._done:
            return
        for future in list(self._pending.values()):
            with contextlib.suppress(Exception):  # the abort below is what matters now
                future.result()
        with contextlib.suppress(ImsApiError):
            self.api.abort(self.upload_id)
        self._done = True


def put_part(putter: PartPutter, url_for: Callable[[bool], str], body: bytes) -> str:
    """PUT one part with retries: transport errors and 5xx again; a refused URL (expired?) once more re-signed.

    `url_for(fresh)` gives the part's URL, a newly signed one when `fresh`. Returns the part's ETag.
    """
    fresh = False
    delay = 0.5
    reason = ""
    for attempt in range(1, PUT_ATTEMPTS + 1):
        url = url_for(fresh)
        fresh = False
        try:
            status, etag, text = putter.put(url, body)
        except OSError as exc:
            reason = str(exc)
        else:
            if status == 200 and etag:
                return etag
            reason = f"HTTP {status}: {_strip_url(text)}"
            if status == 403:
                fresh = True
            elif 400 <= status < 500 and status not in (408, 429):
                break
        if attempt < PUT_ATTEMPTS:
            time.sleep(delay)
            delay = min(delay * 2, 8)
    raise UploadError(reason)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _strip_url(text: str) -> str:
    # S3 error bodies may quote the request; never let a signature reach a log line.
    return re.sub(r"X-Amz-[A-Za-z-]+=[^&\s<]*", "", text)


class JobArtifactSink:
    """Uploads for a job's result image through IMS: the store interface `ims.client.artifacts` uses."""

    def __init__(
        self,
        client: ImsClient,
        job_id: str,
        verify: bool | str = True,
        threads: int = THREADS,
        part_size: int = PART_SIZE,
    ) -> None:
        self.api = JobArtifactApi(client, job_id)
        self.putter = PartPutter(verify)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ims-part")
        self.part_size = part_size
        self.first_part_size = min(FIRST_PART_SIZE, part_size)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __enter__(self) -> JobArtifactSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _split(location: S3Location) -> tuple[str, str]:
        key = PurePosixPath(location.key)
        if len(key.parts) != 2:
            raise UploadError(f"a job uploads only <image_id>/<name> keys, not {location.key}")
        return key.parts[0], key.parts[1]

    def start(self, location: S3Location, path: Path, content_type: str = "application/octet-stream") -> FileUpload:
        image_id, name = self._split(location)
        return FileUpload(
            self.api,
            self.putter,
            self.pool,
            image_id=image_id,
            name=name,
            path=path,
            content_type=content_type,
            first_part_size=self.first_part_size,
            part_size=self.part_size,
        )

    def upload_file(
        self,
        path: Path,
        location: S3Location,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, str]:
        """Upload a finished file; returns (etag, md5) like `ArtifactStore.upload_file`."""
        upload = self.start(location, path, content_type)
        try:
            done = upload.finish({k: v for k, v in (metadata or {}).items() if k != "md5sum"})
        except BaseException:
            upload.abort()
            raise
        if progress is not None:
            progress(done.size)
        return done.etag, done.md5

    def put_bytes(
        self,
        location: S3Location,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """A small object (the manifest) in one part; IMS stores its md5sum as for any upload."""
        image_id, name = self._split(location)
        upload_id, _, _ = self.api.create(image_id, name, content_type)
        try:
            etag = put_part(self.putter, lambda fresh: self.api.part_urls(upload_id, [1])[1], data)
            md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - the contract's checksum
            extra = {k: v for k, v in (metadata or {}).items() if k != "md5sum"}
            body = self.api.complete(upload_id, [(1, etag)], md5, extra)
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.api.abort(upload_id)
            raise
        return str(body.get("etag") or etag).strip('"')

    def discard_image_objects(self, bucket: str, image_id: str) -> None:
        """Nothing can be done: a job holds no S3 credentials. Its aborted uploads left nothing; the objects it
        completed stay under the unlinked image id."""


def is_md5_etag(etag: str) -> bool:
    """A single-part ETag (32 hex digits, no `-N`): S3 computed it as the md5 of the object's bytes."""
    return bool(_HEX32.match(etag.strip('"').lower()))

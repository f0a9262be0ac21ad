"""One S3 gateway for the server, the workers and the job stages."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ims.domain.links import S3Location

log = logging.getLogger(__name__)

PART_SIZE = 64 * 1024 * 1024
SINGLE_COPY_LIMIT = 5 * 1024**3  # AWS refuses a single-request copy of a larger object
_TRANSFER = TransferConfig(
    multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4, use_threads=True
)


class ArtifactError(Exception):
    """An S3 object could not be read, written or moved."""


class ArtifactMissing(ArtifactError):
    """S3 said so: 404 / NoSuchKey. The only error that means an object is not there."""


class ArtifactUnavailable(ArtifactError):
    """S3 could not be reached or failed (connection, timeout, 5xx, a busy request pool): try again later."""


class ArtifactCorrupt(ArtifactError):
    """The object is there but is not what it should be (e.g. a manifest that is not JSON)."""


# Every S3 call that failed, by operation and kind; the metrics endpoint reads it.
S3_ERRORS: dict[tuple[str, str], int] = {}
_S3_ERRORS_LOCK = threading.Lock()


# Called for every failed S3 call (the metrics endpoint registers one).
ERROR_HOOKS: list[Callable[[str, str], None]] = []


def count_error(operation: str, kind: str) -> None:
    with _S3_ERRORS_LOCK:
        S3_ERRORS[(operation, kind)] = S3_ERRORS.get((operation, kind), 0) + 1
    for hook in ERROR_HOOKS:
        try:
            hook(operation, kind)
        except Exception:  # metrics never break an S3 call
            log.debug("S3 error hook failed", exc_info=True)


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 failure is worth retrying: unreachable, timed out, throttled or a server error."""
    if isinstance(exc, ArtifactUnavailable):
        return True
    if isinstance(exc, ArtifactMissing | ArtifactCorrupt):
        return False
    if isinstance(exc, ArtifactError):
        return isinstance(exc.__cause__, Exception) and is_transient(exc.__cause__)
    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        return _status(exc) in (0, 429) or _status(exc) >= 500
    return isinstance(exc, ConnectionError | TimeoutError)


def _failure(operation: str, exc: Exception) -> ArtifactError:
    """Wrap a boto error: transient ones as ArtifactUnavailable, the rest as ArtifactError."""
    if is_transient(exc):
        count_error(operation, "unavailable")
        return ArtifactUnavailable(f"S3 {operation} failed: {exc}")
    count_error(operation, "error")
    return ArtifactError(str(exc))


class ArtifactTooLarge(ArtifactError):
    pass


@dataclass(frozen=True)
class S3Config:
    endpoint: str
    access_key: str
    secret_key: str
    verify: bool | str = False
    connect_timeout: float = 60
    read_timeout: float = 60
    url_expiration: int = 432000
    max_attempts: int = 3


@dataclass(frozen=True)
class ObjectInfo:
    etag: str
    size: int
    metadata: dict[str, str]
    content_type: str


def make_client(config: S3Config) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint or None,
        aws_access_key_id=config.access_key or None,
        aws_secret_access_key=config.secret_key or None,
        region_name="us-east-1",
        verify=config.verify,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"max_attempts": config.max_attempts, "mode": "standard"},
            max_pool_connections=32,
        ),
    )


class _Md5Reader:
    """A forward-only reader that hashes what passes through, so the md5 costs no second read."""

    def __init__(self, raw: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._progress = progress
        self.md5 = hashlib.md5()  # noqa: S324 - md5 is the artifact checksum of the wire contract
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self.md5.update(chunk)
        self.size += len(chunk)
        if self._progress is not None and chunk:
            self._progress(len(chunk))
        return chunk


class ArtifactStore:
    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.client = make_client(config)

    # --- reading
    def head(self, location: S3Location) -> ObjectInfo | None:
        try:
            reply = self.client.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as exc:
            # Only S3 saying "not there" means missing; anything else (503, 403, a timeout) is an error.
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                return None
            raise _failure("head", exc) from exc
        except BotoCoreError as exc:
            raise _failure("head", exc) from exc
        return ObjectInfo(
            etag=str(reply.get("ETag", "")).strip('"'),
            size=int(reply.get("ContentLength", 0)),
            metadata=dict(reply.get("Metadata", {})),
            content_type=str(reply.get("ContentType", "")),
        )

    def read_bytes(self, location: S3Location, max_size: int | None = None) -> bytes:
        try:
            reply = self.client.get_object(Bucket=location.bucket, Key=location.key)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("NoSuchKey", "NoSuchBucket"):
                raise ArtifactMissing(location.url) from exc
            raise _failure("get", exc) from exc
        except BotoCoreError as exc:
            raise _failure("get", exc) from exc
        if max_size is not None and int(reply.get("ContentLength", 0)) >= max_size:
            reply["Body"].close()
            raise ArtifactTooLarge(location.url)
        try:
            body: bytes = reply["Body"].read()
        except (BotoCoreError, OSError) as exc:
            raise ArtifactUnavailable(f"S3 get of {location.url} broke off: {exc}") from exc
        return body

    def read_json(self, location: S3Location, max_size: int | None = None) -> Any:
        data = self.read_bytes(location, max_size)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ArtifactCorrupt(f"{location.url} is not JSON: {exc}") from exc

    def presign_get(self, location: S3Location, expires: int | None = None) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": location.bucket, "Key": location.key},
            ExpiresIn=expires or self.config.url_expiration,
        )
        return url

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    # --- writing
    def put_bytes(
        self,
        location: S3Location,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        reply = self.client.put_object(
            Bucket=location.bucket, Key=location.key, Body=data, ContentType=content_type, Metadata=metadata or {}
        )
        return str(reply.get("ETag", "")).strip('"')

    def put_json(self, location: S3Location, value: Any) -> str:
        return self.put_bytes(location, json.dumps(value).encode(), "application/json")

    def upload_file(
        self,
        path: Path,
        location: S3Location,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, str]:
        """Multipart upload; returns (etag, md5) with the md5 taken from the bytes as they were sent."""
        with path.open("rb") as raw:
            reader = _Md5Reader(raw, progress)
            self.client.upload_fileobj(
                reader,
                location.bucket,
                location.key,
                ExtraArgs={"ContentType": content_type, "Metadata": metadata or {}},
                Config=_TRANSFER,
            )
        md5 = reader.md5.hexdigest()
        if metadata is None or "md5sum" not in metadata:
            # The md5 is known only after the body went up; record it on the object as the original does.
            new_metadata = dict(metadata or {}, md5sum=md5)
            self._replace_metadata(location, new_metadata, content_type, reader.size)
        info = self.head(location)
        return (info.etag if info else ""), md5

    def _replace_metadata(
        self, location: S3Location, metadata: dict[str, str], content_type: str, size: int
    ) -> None:
        """Rewrite an object's metadata in place. A single CopyObject is a metadata-only change on most
        servers but is refused above 5 GB; larger objects go through the managed (multipart) copy."""
        source = {"Bucket": location.bucket, "Key": location.key}
        if size <= SINGLE_COPY_LIMIT:
            self.client.copy_object(
                Bucket=location.bucket,
                Key=location.key,
                CopySource=source,
                Metadata=metadata,
                ContentType=content_type,
                MetadataDirective="REPLACE",
            )
            return
        self.client.copy(
            source,
            location.bucket,
            location.key,
            ExtraArgs={"Metadata": metadata, "ContentType": content_type, "MetadataDirective": "REPLACE"},
            Config=_TRANSFER,
        )

    def download_file(
        self, location: S3Location, path: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        self.client.download_file(location.bucket, location.key, str(path), Config=_TRANSFER, Callback=progress)

    def delete(self, location: S3Location) -> bool:
        """Delete an object; False when it was already gone."""
        if self.head(location) is None:
            return False
        self.client.delete_object(Bucket=location.bucket, Key=location.key)
        return True

    def discard_image_objects(self, bucket: str, image_id: str) -> None:
        """Every object under `<image_id>/` (what an unfinished upload of that image left)."""
        for key in self.list_keys(bucket, f"{image_id}/"):
            self.delete(S3Location(bucket, key))

    def move(self, source: S3Location, target: S3Location) -> str:
        """Copy then delete, safe to repeat after a crash: a finished move is recognised and kept."""
        if self.head(source) is None:
            info = self.head(target)
            if info is None:
                raise ArtifactMissing(source.url)
            return info.etag
        self.abort_unfinished_uploads(target)
        self.client.copy(
            {"Bucket": source.bucket, "Key": source.key}, target.bucket, target.key, Config=_TRANSFER
        )
        info = self.head(target)
        if info is None:
            raise ArtifactError(f"copy of {source.url} to {target.url} did not arrive")
        self.client.delete_object(Bucket=source.bucket, Key=source.key)
        return info.etag

    def abort_unfinished_uploads(self, location: S3Location) -> None:
        """Drop the parts of multipart uploads to this key that never completed: a copy cut short by a crash
        leaves them behind, holding storage that no listing of objects shows."""
        try:
            reply = self.client.list_multipart_uploads(Bucket=location.bucket, Prefix=location.key)
            for upload in reply.get("Uploads", []):
                if upload.get("Key") == location.key:
                    self.client.abort_multipart_upload(
                        Bucket=location.bucket, Key=location.key, UploadId=upload["UploadId"]
                    )
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not clear unfinished uploads to %s: %s", location.url, exc)

    def ensure_buckets(self, names: list[str]) -> None:
        existing = {bucket["Name"] for bucket in self.client.list_buckets().get("Buckets", [])}
        for name in names:
            if name not in existing:
                try:
                    self.client.create_bucket(Bucket=name)
                except ClientError as exc:
                    if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    def ping(self) -> bool:
        try:
            self.client.list_buckets()
            return True
        except Exception:
            count_error("ping", "unavailable")
            return False


    # --- multipart uploads a job makes through presigned URLs (ims.services.job_uploads)
    def create_multipart_upload(self, location: S3Location, content_type: str) -> str:
        try:
            reply = self.client.create_multipart_upload(
                Bucket=location.bucket, Key=location.key, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise _upload_error(exc, location) from exc
        return str(reply["UploadId"])

    def presign_upload_part(
        self, location: S3Location, upload_id: str, part_number: int, expires: int | None = None
    ) -> str:
        url: str = self.client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": location.bucket, "Key": location.key, "UploadId": upload_id, "PartNumber": part_number},
            ExpiresIn=expires or self.config.url_expiration,
        )
        return url

    def check_multipart_upload(self, location: S3Location, upload_id: str) -> None:
        """ArtifactMissing when S3 knows no such unfinished upload to this key."""
        try:
            self.client.list_parts(Bucket=location.bucket, Key=location.key, UploadId=upload_id, MaxParts=1)
        except (ClientError, BotoCoreError) as exc:
            raise _upload_error(exc, location) from exc

    def complete_multipart_upload(
        self, location: S3Location, upload_id: str, parts: list[tuple[int, str]], metadata: dict[str, str]
    ) -> ObjectInfo:
        """Complete the upload, then set the object's metadata (the md5 is known only now, as with
        upload_file); returns the object as it finally is."""
        try:
            self.client.complete_multipart_upload(
                Bucket=location.bucket,
                Key=location.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]},
            )
            info = self.head(location)
            if info is None:
                raise ArtifactError(f"{location.url} is not there after its upload completed")
            self._replace_metadata(location, metadata, info.content_type or "application/octet-stream", info.size)
            final = self.head(location)
        except (ClientError, BotoCoreError) as exc:
            raise _upload_error(exc, location) from exc
        if final is None:
            raise ArtifactError(f"{location.url} is not there after its metadata was set")
        return final

    def abort_multipart_upload(self, location: S3Location, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=location.bucket, Key=location.key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as exc:
            raise _upload_error(exc, location) from exc

    def abort_uploads_under(self, bucket: str, prefix: str) -> int:
        """Abort every unfinished multipart upload to a key under `prefix` (a job that ended mid-upload)."""
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
        return aborted


class ArtifactRejected(ArtifactError):
    """S3 refused what the caller sent (a wrong part list, a part too small): the caller's mistake."""


def _upload_error(exc: Exception, location: S3Location) -> ArtifactError:
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "")) or code
        if code in ("NoSuchUpload", "NoSuchKey", "404"):
            return ArtifactMissing(f"no such upload to {location.url}")
        if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "InvalidArgument", "MalformedXML"):
            return ArtifactRejected(f"{code}: {message}")
    return ArtifactError(f"S3 failed for {location.url}: {exc}")

def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class GuardedStore:
    """The S3 calls made while a request waits: short timeouts, no retries, a bounded number at once and a
    breaker. While S3 hangs, at most `concurrency` request threads wait (each for at most the timeout); the
    others, and every call while the breaker is open, fail at once with ArtifactUnavailable (a 503), so
    requests that need no S3 keep their threads."""

    def __init__(self, store: ArtifactStore, concurrency: int = 8, breaker_seconds: float = 5.0) -> None:
        self.store = store
        self.config = store.config
        self._slots = threading.BoundedSemaphore(concurrency)
        self._breaker_seconds = breaker_seconds
        self._open_until = 0.0

    def _guard(self, operation: str, call: Callable[[], Any]) -> Any:
        if time.monotonic() < self._open_until:
            count_error(operation, "fast_fail")
            raise ArtifactUnavailable("S3 is not answering (it failed moments ago); try again shortly")
        if not self._slots.acquire(timeout=0.2):
            count_error(operation, "busy")
            raise ArtifactUnavailable("too many S3 calls are waiting for S3; try again shortly")
        try:
            result = call()
        except ArtifactUnavailable:
            self._open_until = time.monotonic() + self._breaker_seconds
            raise
        finally:
            self._slots.release()
        self._open_until = 0.0
        return result

    def mark_up(self) -> None:
        self._open_until = 0.0

    def mark_down(self) -> None:
        self._open_until = time.monotonic() + self._breaker_seconds

    def head(self, location: S3Location) -> ObjectInfo | None:
        result: ObjectInfo | None = self._guard("head", lambda: self.store.head(location))
        return result

    def read_json(self, location: S3Location, max_size: int | None = None) -> Any:
        return self._guard("get", lambda: self.store.read_json(location, max_size))

    def presign_get(self, location: S3Location, expires: int | None = None) -> str:
        return self.store.presign_get(location, expires)

    def ping(self) -> bool:
        ok = self.store.ping()
        if ok:
            self.mark_up()
        return ok

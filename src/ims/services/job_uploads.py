"""A job's artifacts through presigned URLs, so that no job holds an S3 credential.

- input: a presigned GET for what the job downloads (its recipe archive or its image's rootfs);
- uploads: a multipart upload to `<boot-images bucket>/<image_id>/<name>` of an image the job created;
  the job PUTs the parts to presigned UploadPart URLs, and IMS completes the upload and sets the object's
  `md5sum` (and `x-shasta-ims-*`) metadata, so the object looks exactly like one `upload_file` made.

The upload id handed out carries the key and S3's own upload id; every call checks again that the key is
one of the job's images. No S3 call happens inside a database transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ims.artifacts.s3 import ArtifactError, ArtifactMissing, ArtifactRejected
from ims.domain.errors import ImsError, NotFound, Unavailable, Unprocessable, ValidationFailed
from ims.domain.links import S3Location
from ims.jobs import state
from ims.services.context import ServiceContext
from ims.store import job_tokens, repository

ARTIFACT_NAMES = frozenset({"rootfs", "kernel", "initrd", "boot_parameters", "debug_kernel", "manifest.json"})
_JOB_FILE_FIELDS = ("kernel_file_name", "initrd_file_name", "kernel_parameters_file_name")
MAX_PART_NUMBER = 10000
MAX_PARTS_PER_CALL = 100
PART_URL_MAX_SECONDS = 86400
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_META_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+( *;[ -~]*)?$")
MAX_METADATA_BYTES = 1800  # S3 allows 2 KB of user metadata; md5sum takes the rest
MSG_NO_UPLOAD = "No such upload: it was completed, aborted or never started, or its id is not one IMS gave out."


class Forbidden(ImsError):
    status = 403


def _plain_name(value: str) -> bool:
    return bool(value) and value not in (".", "..") and "/" not in value and all(ord(ch) >= 32 for ch in value)


def encode_upload_id(key: str, s3_upload_id: str) -> str:
    raw = json.dumps([key, s3_upload_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_upload_id(upload_id: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4))
        key, s3_upload_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise NotFound(MSG_NO_UPLOAD) from None
    if not isinstance(key, str) or not isinstance(s3_upload_id, str) or not s3_upload_id:
        raise NotFound(MSG_NO_UPLOAD)
    return key, s3_upload_id


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed({"_schema": ["The body must be a JSON object."]})
    return body


class JobUploadService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.bucket = ctx.settings.s3_boot_images_bucket

    # --- input
    def input(self, job_id: str) -> dict[str, Any]:
        with self.ctx.database.read() as conn:
            row = state.load(conn, job_id)
        if row is None or row.deleted:
            raise NotFound()
        path = str(row.launch.get("download_path") or "")
        if not path:
            raise NotFound("The job has no input artifact.")
        try:
            url = self.ctx.artifacts.presign_get(S3Location.parse(path))
        except Exception as exc:  # boto raises several unrelated types here
            raise Unavailable(f"Unable to sign a download URL for {path}: {exc}") from None
        return {"url": url, "md5": str(row.launch.get("md5") or ""), "path": path}

    # --- uploads
    def start(self, job_id: str, body: Any) -> dict[str, Any]:
        fields = _object(body)
        errors: dict[str, list[str]] = {}
        image_id, name = fields.get("image_id"), fields.get("name")
        content_type = fields.get("content_type", DEFAULT_CONTENT_TYPE)
        if not isinstance(image_id, str) or not _plain_name(image_id):
            errors["image_id"] = ["Required: the id of an image this job created."]
        if not isinstance(name, str) or not _plain_name(name):
            errors["name"] = ["Required: a plain file name (no '/', not '.' or '..', no control characters)."]
        if content_type is None:
            content_type = DEFAULT_CONTENT_TYPE
        if not isinstance(content_type, str) or len(content_type) > 255 or not _CONTENT_TYPE.match(content_type):
            errors["content_type"] = ["Must be a MIME type such as application/octet-stream."]
        unknown = sorted(set(fields) - {"image_id", "name", "content_type"})
        if unknown:
            errors.update({field: ["Unknown field."] for field in unknown})
        if errors:
            raise ValidationFailed(errors)
        assert isinstance(image_id, str) and isinstance(name, str) and isinstance(content_type, str)
        location = self._location(job_id, f"{image_id}/{name}")
        try:
            s3_upload_id = self.ctx.artifacts.create_multipart_upload(location, content_type)
        except ArtifactError as exc:
            raise Unavailable(f"S3 is not available: {exc}") from None
        return {
            "upload_id": encode_upload_id(location.key, s3_upload_id),
            "bucket": location.bucket,
            "key": location.key,
        }

    def part_urls(self, job_id: str, upload_id: str, body: Any) -> dict[str, Any]:
        fields = _object(body)
        numbers = fields.get("part_numbers")
        problem = None
        if not isinstance(numbers, list) or not numbers:
            problem = "Required: a list of part numbers."
        elif len(numbers) > MAX_PARTS_PER_CALL:
            problem = f"At most {MAX_PARTS_PER_CALL} part numbers per call."
        elif any(type(n) is not int or not 1 <= n <= MAX_PART_NUMBER for n in numbers):
            problem = f"Part numbers are integers from 1 to {MAX_PART_NUMBER}."
        errors = {"part_numbers": [problem]} if problem else {}
        errors.update({field: ["Unknown field."] for field in sorted(set(fields) - {"part_numbers"})})
        if errors:
            raise ValidationFailed(errors)
        assert isinstance(numbers, list)
        location, s3_upload_id = self._upload(job_id, upload_id)
        self._s3(lambda: self.ctx.artifacts.check_multipart_upload(location, s3_upload_id))
        expires = min(self.ctx.settings.s3_url_expiration, PART_URL_MAX_SECONDS)
        urls = [
            {"part_number": n, "url": self.ctx.artifacts.presign_upload_part(location, s3_upload_id, n, expires)}
            for n in numbers
        ]
        return {"part_urls": urls}

    def complete(self, job_id: str, upload_id: str, body: Any) -> dict[str, Any]:
        fields = _object(body)
        parts, parts_error = _parts(fields.get("parts"))
        errors: dict[str, list[str]] = {"parts": [parts_error]} if parts_error else {}
        md5 = fields.get("md5sum")
        if not isinstance(md5, str) or not _MD5.match(md5):
            errors["md5sum"] = ["Required: the md5 of the whole object, 32 hex digits."]
        metadata, metadata_error = _metadata(fields.get("metadata"))
        if metadata_error:
            errors["metadata"] = [metadata_error]
        errors.update({f: ["Unknown field."] for f in sorted(set(fields) - {"parts", "md5sum", "metadata"})})
        if errors:
            raise ValidationFailed(errors)
        assert isinstance(md5, str)
        location, s3_upload_id = self._upload(job_id, upload_id)
        metadata["md5sum"] = md5.lower()
        info = self._s3(lambda: self.ctx.artifacts.complete_multipart_upload(location, s3_upload_id, parts, metadata))
        return {"bucket": location.bucket, "key": location.key, "etag": info.etag, "size": info.size}

    def abort(self, job_id: str, upload_id: str) -> None:
        location, s3_upload_id = self._upload(job_id, upload_id)
        self._s3(lambda: self.ctx.artifacts.abort_multipart_upload(location, s3_upload_id))

    # --- checks
    def _upload(self, job_id: str, upload_id: str) -> tuple[S3Location, str]:
        key, s3_upload_id = decode_upload_id(upload_id)
        return self._location(job_id, key), s3_upload_id

    def _location(self, job_id: str, key: str) -> S3Location:
        """The key `<image_id>/<name>` of an image this job created, with a name a job's artifact may have."""
        image_id, _, name = key.partition("/")
        with self.ctx.database.read() as conn:
            job = repository.jobs.get(conn, job_id)
            if job is None:
                raise NotFound()
            images = job_tokens.result_images(conn, job_id)
            image = repository.images.get(conn, image_id) if image_id in images else None
        if image_id not in images:
            raise Forbidden(
                f"Image {image_id} was not created by job {job_id}: the job may upload only to its own images."
            )
        if image is None:
            raise NotFound(f"Image {image_id} does not exist (any more).")
        allowed = set(ARTIFACT_NAMES) | {str(job.get(field)) for field in _JOB_FILE_FIELDS if job.get(field)}
        if not _plain_name(name) or name not in allowed:
            raise ValidationFailed({"name": [f"Must be one of: {', '.join(sorted(allowed))}."]})
        return S3Location(self.bucket, key)

    @staticmethod
    def _s3(action: Any) -> Any:
        try:
            return action()
        except ArtifactMissing:
            raise NotFound(MSG_NO_UPLOAD) from None
        except ArtifactRejected as exc:
            raise Unprocessable(f"S3 refused the upload: {exc}") from None
        except ArtifactError as exc:
            raise Unavailable(f"S3 is not available: {exc}") from None


def _parts(value: Any) -> tuple[list[tuple[int, str]], str | None]:
    if not isinstance(value, list) or not value:
        return [], "Required: a list of {part_number, etag}."
    if len(value) > MAX_PART_NUMBER:
        return [], f"At most {MAX_PART_NUMBER} parts."
    parts: dict[int, str] = {}
    for item in value:
        if not isinstance(item, dict) or set(item) - {"part_number", "etag"}:
            return [], "Each part is {part_number, etag}."
        number, etag = item.get("part_number"), item.get("etag")
        if type(number) is not int or not 1 <= number <= MAX_PART_NUMBER:
            return [], f"part_number is an integer from 1 to {MAX_PART_NUMBER}."
        if not isinstance(etag, str) or not etag.strip() or len(etag) > 200 or any(ord(c) < 32 for c in etag):
            return [], "etag is the ETag header S3 answered the part's PUT with."
        if number in parts:
            return [], f"Part {number} is listed twice."
        parts[number] = etag if etag.startswith('"') else f'"{etag}"'
    return sorted(parts.items()), None


def _metadata(value: Any) -> tuple[dict[str, str], str | None]:
    if value is None:
        return {}, None
    if not isinstance(value, dict):
        return {}, "An object of metadata names and values."
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _META_KEY.match(key) or key == "md5sum":
            return {}, f"{key!r} is not a metadata name here (lower-case letters, digits and '-'; not md5sum)."
        if not isinstance(item, str) or any(not 32 <= ord(c) < 127 for c in item):
            return {}, f"The value of {key} must be printable ASCII text."
        result[key] = item
    if sum(len(k) + len(v) for k, v in result.items()) > MAX_METADATA_BYTES:
        return {}, f"At most {MAX_METADATA_BYTES} bytes of metadata."
    return result, None

"""Upload a boot image's artifacts and manifest, as the original ims-python-helper does.

Sequence: POST the image record; upload rootfs, kernel, initrd (and the optional boot parameters and
debug kernel) to `<bucket>/<image_id>/<kind>` in parallel, each with `md5sum` and `x-shasta-ims-*`
metadata; write `<image_id>/manifest.json` (manifest v1.0); PATCH the image's link; PATCH the job's
`resultant_image_id`. If anything fails before the link is set, the record and the uploaded objects go.

The store is anything with `upload_file`, `put_bytes` and `discard_image_objects` (`ArtifactSink`): an
`ArtifactStore` with the caller's own S3 credentials (ims-python-helper's `image_upload_artifacts` outside a
job), or, inside a job, `ims.client.job_uploads.JobArtifactSink`, which goes through IMS's presigned URLs with
the job's token. This module imports no S3 library: a job starts faster without boto3, which it never uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ims.client.http import ImsClient
from ims.domain.links import S3Location, make_link
from ims.domain.manifest import (
    MIME_BOOT_PARAMETERS,
    MIME_DEBUG_KERNEL,
    MIME_INITRD,
    MIME_KERNEL,
    MIME_ROOTFS,
    build_manifest,
    manifest_artifact,
)
from ims.domain.timeutil import utcnow

log = logging.getLogger(__name__)

# Object name under `<image_id>/` and MIME type, in manifest order.
ARTIFACT_KINDS: dict[str, str] = {
    "rootfs": MIME_ROOTFS,
    "kernel": MIME_KERNEL,
    "initrd": MIME_INITRD,
    "boot_parameters": MIME_BOOT_PARAMETERS,
    "debug_kernel": MIME_DEBUG_KERNEL,
}
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class UploadedArtifact:
    kind: str
    location: S3Location
    etag: str
    md5: str
    mime_type: str


@dataclass(frozen=True)
class ArtifactSet:
    manifest: dict[str, Any]
    manifest_link: dict[str, Any]
    artifacts: list[UploadedArtifact]


@dataclass(frozen=True)
class UploadResult:
    image: dict[str, Any]
    manifest: dict[str, Any]


class ArtifactSink(Protocol):
    def upload_file(
        self,
        path: Path,
        location: S3Location,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[str, str]:
        """Upload a file with `metadata` plus its `md5sum`; return (etag, md5)."""

    def put_bytes(
        self,
        location: S3Location,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str: ...

    def discard_image_objects(self, bucket: str, image_id: str) -> None:
        """Delete what an unfinished upload of image `image_id` left in `bucket`, where this sink can."""


def image_metadata(name: str, image_id: str, job_id: str | None) -> dict[str, str]:
    metadata = {"x-shasta-ims-image-name": name, "x-shasta-ims-image-id": image_id}
    if job_id:
        metadata["x-shasta-ims-job-id"] = job_id
    return metadata


def upload_artifact_set(
    store: ArtifactSink,
    *,
    bucket: str,
    image_id: str,
    files: Mapping[str, Path],
    metadata: Mapping[str, str],
    progress: Callable[[str], None] | None = None,
) -> ArtifactSet:
    """Upload the files (keys of ARTIFACT_KINDS) in parallel, then the manifest that lists them.

    The small files go up while the root file system is still streaming; each upload hashes its bytes
    as they are sent, so no file is read twice.
    """
    unknown = set(files) - set(ARTIFACT_KINDS)
    if unknown:
        raise ValueError(f"unknown artifact kinds: {sorted(unknown)}")
    if "rootfs" not in files:
        raise ValueError("an image needs a rootfs artifact")

    def upload(kind: str) -> UploadedArtifact:
        location = S3Location(bucket, f"{image_id}/{kind}")
        etag, md5 = store.upload_file(files[kind], location, metadata=dict(metadata))
        if progress is not None:
            progress(f"uploaded {kind} to {location.url}")
        return UploadedArtifact(kind, location, etag, md5, ARTIFACT_KINDS[kind])

    kinds = [kind for kind in ARTIFACT_KINDS if kind in files]
    with ThreadPoolExecutor(max_workers=len(kinds), thread_name_prefix="ims-upload") as pool:
        futures = [pool.submit(upload, kind) for kind in kinds]
        uploaded = [future.result() for future in futures]
    return write_manifest(store, bucket, image_id, uploaded)


def write_manifest(store: ArtifactSink, bucket: str, image_id: str, uploaded: list[UploadedArtifact]) -> ArtifactSet:
    """`<image_id>/manifest.json` (v1.0) listing the uploaded artifacts in ARTIFACT_KINDS order."""
    order = list(ARTIFACT_KINDS)
    uploaded = sorted(uploaded, key=lambda item: order.index(item.kind))
    manifest = build_manifest(
        [manifest_artifact(make_link(item.location, item.etag), item.mime_type, item.md5) for item in uploaded],
        # The original writes `str(datetime.now())`: a space between date and time, no zone.
        str(utcnow()),
    )
    body = json.dumps(manifest, sort_keys=True, indent=4).encode()
    md5 = hashlib.md5(body).hexdigest()  # noqa: S324 - md5 is the checksum the contract asks for
    manifest_location = S3Location(bucket, f"{image_id}/{MANIFEST_NAME}")
    etag = store.put_bytes(manifest_location, body, "application/json", {"md5sum": md5})
    return ArtifactSet(manifest, make_link(manifest_location, etag), uploaded)


def register_image(
    client: ImsClient,
    store: ArtifactSink,
    *,
    name: str,
    arch: str,
    job_id: str | None,
    bucket: str,
    upload: Callable[[str], list[UploadedArtifact]],
    progress: Callable[[str], None] | None = None,
) -> UploadResult:
    """POST the record, `upload(image_id)` the artifacts, write the manifest, PATCH the link and the job.

    Anything failing before the link is set removes the record and (with S3 credentials) the objects.
    """
    image = client.create_image(name, arch)
    image_id = str(image["id"])
    if progress is not None:
        progress(f"created image record {image_id}")
    try:
        uploaded = write_manifest(store, bucket, image_id, upload(image_id))
        image = client.patch_image(image_id, {"link": uploaded.manifest_link})
    except BaseException:
        _undo(client, store, bucket, image_id)
        raise
    if job_id:
        client.patch_job(job_id, resultant_image_id=image_id)
    return UploadResult(image, uploaded.manifest)


def upload_image_artifacts(
    client: ImsClient,
    store: ArtifactSink,
    *,
    name: str,
    arch: str,
    job_id: str | None,
    rootfs: Path,
    kernel: Path,
    initrd: Path,
    kernel_parameters: Path | None = None,
    debug_kernel: Path | None = None,
    bucket: str = "boot-images",
    progress: Callable[[str], None] | None = None,
) -> UploadResult:
    files: dict[str, Path] = {"rootfs": rootfs, "kernel": kernel, "initrd": initrd}
    if kernel_parameters is not None:
        files["boot_parameters"] = kernel_parameters
    if debug_kernel is not None:
        files["debug_kernel"] = debug_kernel
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"artifact {path} is not a regular file")

    def upload(image_id: str) -> list[UploadedArtifact]:
        return upload_artifact_set(
            store,
            bucket=bucket,
            image_id=image_id,
            files=files,
            metadata=image_metadata(name, image_id, job_id),
            progress=progress,
        ).artifacts

    return register_image(
        client, store, name=name, arch=arch, job_id=job_id, bucket=bucket, upload=upload, progress=progress
    )


def _undo(client: ImsClient, store: ArtifactSink, bucket: str, image_id: str) -> None:
    """Best effort: the original error is what the caller must see, so cleanup failures are only logged.

    A job (no S3 credentials) cannot delete objects: its aborted uploads leave nothing, and the objects it
    completed stay under the unlinked image id.
    """
    try:
        store.discard_image_objects(bucket, image_id)
    except Exception as exc:
        log.warning("could not delete the objects of image %s: %s", image_id, exc)
    try:
        client.purge_image(image_id)
    except Exception as exc:
        log.warning("could not delete image record %s: %s", image_id, exc)

"""Moving artifacts between S3 and local files with progress reports and md5 checks.

`TrackedStore` is an `ArtifactStore` whose uploads and downloads report bytes to a `Progress`, so helpers
that take a store (such as `upload_image_artifacts`) show progress without knowing about it.
`download_image` fetches every artifact an image's manifest lists and verifies each md5.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.client.resources import Ims
from ims.domain.links import S3Location, link_location

CHUNK = 8 * 1024 * 1024
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024

Advance = Callable[[int], None]


class Progress(Protocol):
    def start(self, label: str, total: int | None) -> Advance:
        """Begin a transfer of `total` bytes; the returned callable is given each chunk's size."""

    def finish(self, label: str) -> None: ...

    def note(self, message: str) -> None: ...


class NoProgress:
    def start(self, label: str, total: int | None) -> Advance:
        return _ignore

    def finish(self, label: str) -> None:
        return None

    def note(self, message: str) -> None:
        return None


def _ignore(_: int) -> None:
    return None


class TransferError(Exception):
    """An artifact could not be fetched or did not match its checksum."""


class TrackedStore(ArtifactStore):
    def __init__(self, config: S3Config, progress: Progress | None = None) -> None:
        super().__init__(config)
        self.progress: Progress = progress or NoProgress()

    def upload_file(
        self,
        path: Path,
        location: S3Location,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        progress: Advance | None = None,
    ) -> tuple[str, str]:
        label = f"upload {PurePosixPath(location.key).name}"
        advance = progress or self.progress.start(label, path.stat().st_size)
        try:
            return super().upload_file(
                path, location, content_type=content_type, metadata=metadata, progress=advance
            )
        finally:
            self.progress.finish(label)

    def download_file(self, location: S3Location, path: Path, progress: Advance | None = None) -> None:
        label = f"download {PurePosixPath(location.key).name}"
        if progress is None:
            info = self.head(location)
            progress = self.progress.start(label, info.size if info else None)
        try:
            super().download_file(location, path, progress)
        finally:
            self.progress.finish(label)


def file_md5(path: Path, progress: Progress | None = None, label: str = "") -> str:
    """md5 of a file, read in large chunks (the checksum the manifest and S3 metadata carry)."""
    tracker = progress or NoProgress()
    label = label or f"verify {path.name}"
    advance = tracker.start(label, path.stat().st_size)
    digest = hashlib.md5()  # noqa: S324 - md5 is the checksum the contract uses
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                advance(len(chunk))
    finally:
        tracker.finish(label)
    return digest.hexdigest()


@dataclass(frozen=True)
class DownloadedArtifact:
    path: Path
    type: str
    size: int
    md5: str
    expected_md5: str

    @property
    def verified(self) -> bool:
        return bool(self.expected_md5) and self.md5 == self.expected_md5


def artifact_file_name(location: S3Location) -> str:
    """The object's last key segment; never anything that could climb out of the target directory."""
    name = PurePosixPath(location.key.split("?", 1)[0]).name
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise TransferError(f"cannot name a local file after {location.url}")
    return name


@dataclass(frozen=True)
class ManifestObject:
    location: S3Location
    raw: bytes
    manifest: dict[str, Any]


def read_image_manifest(ims: Ims, store: ArtifactStore, image_id: str) -> ManifestObject:
    image = ims.images.get(image_id)
    image_link = image.get("link")
    if not image_link or not image_link.get("path"):
        raise TransferError(f"image {image_id} has no manifest link")
    location = link_location(image_link)
    raw = store.read_bytes(location, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise TransferError(f"{location.url} is not an image manifest")
    return ManifestObject(location, raw, manifest)


def download_image(ims: Ims, store: ArtifactStore, image_id: str, dest: Path) -> list[DownloadedArtifact]:
    """Fetch the manifest and every artifact it lists into `dest`; raise on any md5 mismatch.

    Each file is written as `.<name>.part` and renamed only once its md5 matched, so `dest` never holds a
    file that looks complete but is not.
    """
    progress = store.progress if isinstance(store, TrackedStore) else NoProgress()
    found = read_image_manifest(ims, store, image_id)
    manifest, manifest_location = found.manifest, found.location
    dest.mkdir(parents=True, exist_ok=True)

    plan: list[tuple[S3Location, str, str, str]] = []
    seen: set[str] = {MANIFEST_NAME}
    for artifact in manifest["artifacts"]:
        if not isinstance(artifact, dict) or not isinstance(artifact.get("link"), dict):
            raise TransferError(f"{manifest_location.url} lists an artifact without a link")
        location = link_location(artifact["link"])
        name = artifact_file_name(location)
        if name in seen:
            raise TransferError(f"{manifest_location.url} lists two artifacts named {name}")
        seen.add(name)
        plan.append((location, name, str(artifact.get("type", "")), str(artifact.get("md5") or "")))

    results = [_fetch(store, location, dest, name, kind, md5, progress) for location, name, kind, md5 in plan]
    (dest / MANIFEST_NAME).write_bytes(found.raw)
    return results


def _fetch(
    store: ArtifactStore, location: S3Location, dest: Path, name: str, kind: str, expected: str, progress: Progress
) -> DownloadedArtifact:
    info = store.head(location)
    if info is None:
        raise TransferError(f"{location.url} is missing")
    expected = expected or info.metadata.get("md5sum", "")
    partial = dest / f".{name}.part"
    try:
        store.download_file(location, partial)
        md5 = file_md5(partial, progress, f"verify {name}")
        if expected and md5 != expected:
            raise TransferError(f"md5 mismatch for {location.url}: expected {expected}, got {md5}")
        target = dest / name
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if not expected:
        progress.note(f"{name}: no md5 recorded in the manifest or on the object; not verified")
    return DownloadedArtifact(target, kind, target.stat().st_size, md5, expected)


"""Image manifest v1.0: its shape, the artifact MIME types and the original's validation messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ims.domain.errors import BadRequest, Unprocessable

MANIFEST_VERSION = "1.0"
MIME_ROOTFS = "application/vnd.cray.image.rootfs.squashfs"
MIME_KERNEL = "application/vnd.cray.image.kernel"
MIME_INITRD = "application/vnd.cray.image.initrd"
MIME_DEBUG_KERNEL = "application/vnd.cray.image.debug.kernel"
MIME_BOOT_PARAMETERS = "application/vnd.cray.image.parameters.boot"
MIME_MANIFEST = "application/vnd.cray.image.manifest"

_MALFORMED = "The image's manifest.json is malformed. "


def build_manifest(artifacts: list[dict[str, Any]], created: str) -> dict[str, Any]:
    return {"version": MANIFEST_VERSION, "created": created, "artifacts": artifacts}


def manifest_artifact(link: dict[str, Any], mime_type: str, md5: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"link": link, "type": mime_type}
    if md5 is not None:
        entry["md5"] = md5
    return entry


def validate_manifest(
    manifest: Any, link_repr: str, check_artifact: Callable[[dict[str, Any]], None]
) -> None:
    """Check a manifest as the original does, in its order; `check_artifact` heads each artifact link."""
    if not manifest:
        return  # the original accepts a falsy manifest without further checks
    if not isinstance(manifest, dict) or "version" not in manifest:
        raise Unprocessable("The image's manifest.json does not contain a version field.")
    if manifest["version"] != MANIFEST_VERSION:
        raise Unprocessable(
            "The image's manifest.json has a version that is not supported. Supported image manifest versions "
            f"are: {MANIFEST_VERSION}"
        )
    artifacts = manifest.get("artifacts")
    if artifacts is None:
        raise Unprocessable(_MALFORMED + "It does not contain an artifacts map.")
    if not isinstance(artifacts, list):
        raise Unprocessable(_MALFORMED + "The artifacts property is not a json list.")
    for artifact in artifacts:
        if not isinstance(artifact, dict):
            raise Unprocessable(_MALFORMED + "A listed artifact is not a json dictionary.")
        link = artifact.get("link")
        if not isinstance(link, dict) or not link:
            raise Unprocessable(_MALFORMED + "An artifact does not have a link value")
        if "type" not in link:
            raise Unprocessable(_MALFORMED + "An artifact does not have a link type field")
        if link["type"] != "s3":
            raise Unprocessable(_MALFORMED + f"An artifact link type '{link['type']}' not supported")
        if "path" not in link:
            raise Unprocessable(_MALFORMED + "An artifact does not have a link path field")
        check_artifact(link)
    rootfs = 0
    for artifact in artifacts:
        if "type" not in artifact:
            raise Unprocessable(_MALFORMED + "An artifact does not have a type field")
        if str(artifact["type"]).startswith(MIME_ROOTFS):
            rootfs += 1
    if rootfs == 0:
        raise BadRequest(
            f"Error reading the manifest.json for IMS {link_repr}. The manifest does not include any rootfs "
            "artifacts. Determine the specific information that is missing or invalid and then re-run the "
            "request with valid information."
        )
    if rootfs > 1:
        raise BadRequest(
            f"Error reading the manifest.json for IMS {link_repr}. The manifest includes multiple rootfs "
            "artifacts. Determine the specific information that is missing or invalid and then re-run the "
            "request with valid information."
        )


def rootfs_artifacts(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        artifact
        for artifact in manifest.get("artifacts", [])
        if isinstance(artifact, dict) and str(artifact.get("type", "")).startswith(MIME_ROOTFS)
    ]

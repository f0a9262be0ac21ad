"""Checks that need S3 or other records: artifact links, their uniqueness, image manifests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from ims.artifacts.s3 import ArtifactError, ArtifactTooLarge, ArtifactUnavailable
from ims.domain.errors import BadRequest, Unavailable, Unprocessable
from ims.domain.links import link_location
from ims.domain.manifest import validate_manifest
from ims.domain.validation import check_s3_path
from ims.services.context import ServiceContext
from ims.store.repository import RecordRepository


def link_repr(link: dict[str, Any]) -> str:
    """The original quotes the link as a Python dict repr in its messages."""
    return repr({"path": link.get("path"), "etag": link.get("etag", ""), "type": link.get("type")})


def head_artifact(ctx: ServiceContext, link: dict[str, Any]) -> str:
    """Check the object behind a link exists; returns its `md5sum` metadata or ''."""
    if not isinstance(link.get("path"), str) or check_s3_path(link["path"]) is not None:
        # Not an S3 location at all: never handed to S3 (a garbage key used to come back as a 503).
        raise Unprocessable(
            f"The s3 artifact {link_repr(link)} cannot be validated. Please determine the specific information "
            "that is missing or invalid and then re-run the request with valid information.",
            {"path": [check_s3_path(str(link.get("path", ""))) or "path must be of the form s3://bucket/key."]},
        )
    try:
        info = ctx.request_artifacts.head(link_location(link))
    except ArtifactError as exc:
        raise Unavailable(f"S3 is not available: {exc}") from exc
    if info is None:
        raise Unprocessable(
            f"The s3 artifact {link_repr(link)} cannot be validated. Please determine the specific information "
            "that is missing or invalid and then re-run the request with valid information."
        )
    return info.metadata.get("md5sum", "")


def check_link_unique(
    conn: Connection, repo: RecordRepository, kind: str, link: dict[str, Any], record_id: str | None
) -> None:
    other = repo.find_link_user(conn, str(link["path"]), exclude_id=record_id)
    if other is not None:
        raise Unprocessable(
            f"The link path {link['path']} matches the link path for the IMS {kind} record {other}. The link value "
            f"must be unique for each IMS {kind} record. Determine the specific information that is missing or "
            "invalid and then re-run the request with valid information."
        )


def read_manifest(ctx: ServiceContext, link: dict[str, Any]) -> Any:
    location = link_location(link)
    try:
        return ctx.request_artifacts.read_json(location, ctx.settings.max_image_manifest_size_bytes)
    except ArtifactTooLarge:
        raise BadRequest(
            "Image manifest file is larger than the expected maximum size of "
            f"{ctx.settings.max_image_manifest_size_bytes} bytes. Determine the specific information that is "
            "missing or invalid and then re-run the request with valid information."
        ) from None


def validate_image_link(ctx: ServiceContext, link: dict[str, Any]) -> None:
    """The original's manifest checks; an unreadable manifest is a 422 here, not a 500."""
    head_artifact(ctx, link)
    try:
        manifest = read_manifest(ctx, link)
    except ArtifactUnavailable as exc:
        raise Unavailable(f"S3 is not available: {exc}") from exc
    except ArtifactError as exc:
        raise Unprocessable(
            f"Unable to read manifest file {link.get('path')}: {exc}. Determine the specific information that "
            "is missing or invalid and then re-run the request with valid information."
        ) from None
    validate_manifest(manifest, link_repr(link), lambda artifact_link: _head_listed(ctx, artifact_link))


def _head_listed(ctx: ServiceContext, link: dict[str, Any]) -> None:
    head_artifact(ctx, {"path": link.get("path"), "etag": link.get("etag", ""), "type": "s3"})

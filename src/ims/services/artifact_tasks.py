"""Handlers of the queued S3 work. Each is safe to run again after a crash part-way through.

Only S3 saying "no such key" (ArtifactMissing) counts as missing, and only a manifest that is there but not
JSON (ArtifactCorrupt) as unreadable; any other failure (S3 stopped, hung, restarting, 5xx) propagates, so
the task is retried with backoff and never marked done with work left."""

from __future__ import annotations

import logging
from typing import Any

from ims.artifacts.s3 import ArtifactCorrupt, ArtifactMissing
from ims.domain.links import S3Location
from ims.domain.manifest import MIME_MANIFEST, build_manifest
from ims.domain.timeutil import parse_timestamp
from ims.services.context import ServiceContext
from ims.store import repository
from ims.tasks.worker import Handler

log = logging.getLogger(__name__)


def _set_link_etag(ctx: ServiceContext, repo: repository.RecordRepository, record_id: str, path: str, etag: str) -> None:
    with ctx.database.write() as conn:
        record = repo.get_any(conn, record_id)
        if record is None or not isinstance(record.get("link"), dict) or record["link"].get("path") != path:
            return  # the record moved on (deleted, restored, relinked); its link is no longer ours to touch
        record["link"] = dict(record["link"], etag=etag)
        repo.save(conn, record)


def move_recipe(ctx: ServiceContext, payload: dict[str, Any]) -> None:
    source, target = S3Location.parse(payload["source"]), S3Location.parse(payload["target"])
    try:
        etag = ctx.artifacts.move(source, target)
    except ArtifactMissing:
        log.warning("recipe %s: %s is gone; nothing to move", payload["id"], source.url)
        return
    _set_link_etag(ctx, repository.recipes, payload["id"], target.url, etag)


def delete_artifact(ctx: ServiceContext, payload: dict[str, Any]) -> None:
    ctx.artifacts.delete(S3Location.parse(payload["path"]))


def soft_delete_image(ctx: ServiceContext, payload: dict[str, Any]) -> None:
    """Move every artifact and the manifest under `deleted/`, then write `deleted_manifest.json`."""
    manifest_location = S3Location.parse(payload["manifest"])
    deleted_manifest = S3Location.parse(payload["deleted_manifest"])
    if ctx.artifacts.head(deleted_manifest) is not None:
        return  # finished before a crash
    try:
        manifest = ctx.artifacts.read_json(manifest_location)
    except ArtifactMissing:
        # Nothing under the old manifest any more (a repeat of this task, or it never existed).
        moved = manifest_location.deleted()
        if ctx.artifacts.head(moved) is None:
            log.warning("image %s: manifest %s unreadable; link kept", payload["id"], manifest_location.url)
            _restore_original_link(ctx, payload)
            return
        manifest = ctx.artifacts.read_json(moved)
    except ArtifactCorrupt:
        log.warning("image %s: manifest %s unreadable; link kept", payload["id"], manifest_location.url)
        _restore_original_link(ctx, payload)
        return
    entries: list[dict[str, Any]] = []
    for artifact in manifest.get("artifacts", []) if isinstance(manifest, dict) else []:
        link = artifact.get("link") if isinstance(artifact, dict) else None
        if not isinstance(link, dict) or "path" not in link:
            continue
        source = S3Location.parse(link["path"])
        try:
            etag = ctx.artifacts.move(source, source.deleted())
        except ArtifactMissing:
            log.warning("image %s: artifact %s missing; skipped", payload["id"], source.url)
            continue
        entry: dict[str, Any] = {
            "type": artifact.get("type"),
            "link": {"etag": etag, "path": source.deleted().url, "type": link.get("type", "s3")},
        }
        # Unlike the original, an artifact without md5 is still listed, so undelete brings it back.
        if "md5" in artifact:
            entry["md5"] = artifact["md5"]
        entries.append(entry)
    etag = ctx.artifacts.move(manifest_location, manifest_location.deleted())
    entries.append(
        {"type": MIME_MANIFEST, "link": {"etag": etag, "path": manifest_location.deleted().url, "type": "s3"}}
    )
    deleted_at = parse_timestamp(payload["deleted"]).strftime("%Y-%m-%d %H:%M:%S")
    ctx.artifacts.put_json(deleted_manifest, build_manifest(entries, deleted_at))


def _restore_original_link(ctx: ServiceContext, payload: dict[str, Any]) -> None:
    with ctx.database.write() as conn:
        record = repository.images.get_any(conn, payload["id"])
        if record is None or not isinstance(record.get("link"), dict):
            return
        if record["link"].get("path") == payload["deleted_manifest"]:
            record["link"] = repository.images.restore_link(conn, payload["id"]) or record["link"]
            repository.images.save(conn, record)


def undelete_image(ctx: ServiceContext, payload: dict[str, Any]) -> None:
    """Move back everything `deleted_manifest.json` lists, then remove it."""
    deleted_manifest = S3Location.parse(payload["deleted_manifest"])
    try:
        manifest = ctx.artifacts.read_json(deleted_manifest)
    except ArtifactMissing:
        log.warning("image %s: %s is gone; nothing to restore", payload["id"], deleted_manifest.url)
        return
    for artifact in manifest.get("artifacts", []):
        source = S3Location.parse(artifact["link"]["path"])
        target = source.undeleted()
        if target is None:
            continue
        try:
            ctx.artifacts.move(source, target)
        except ArtifactMissing:
            log.warning("image %s: %s missing; not restored", payload["id"], source.url)
    ctx.artifacts.delete(deleted_manifest)


def delete_image_artifacts(ctx: ServiceContext, payload: dict[str, Any]) -> None:
    """Delete every artifact a manifest (active or deleted) lists, then the manifest itself."""
    manifest_location = S3Location.parse(payload["manifest"])
    try:
        manifest = ctx.artifacts.read_json(manifest_location)
    except (ArtifactMissing, ArtifactCorrupt):
        log.warning("%s missing or not JSON; only it is removed", manifest_location.url)
        ctx.artifacts.delete(manifest_location)
        return
    for artifact in manifest.get("artifacts", []) if isinstance(manifest, dict) else []:
        link = artifact.get("link") if isinstance(artifact, dict) else None
        if isinstance(link, dict) and "path" in link:
            ctx.artifacts.delete(S3Location.parse(link["path"]))
    ctx.artifacts.delete(manifest_location)


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {
        "recipe.move": lambda payload: move_recipe(ctx, payload),
        "artifact.delete": lambda payload: delete_artifact(ctx, payload),
        "image.soft_delete": lambda payload: soft_delete_image(ctx, payload),
        "image.undelete": lambda payload: undelete_image(ctx, payload),
        "image.delete_artifacts": lambda payload: delete_image_artifacts(ctx, payload),
    }

"""Public keys, recipes and images: create, patch, list, soft delete, undelete and purge.

Record changes commit at once; S3 renames and deletions are queued as tasks in the same transaction.
No S3 call is made while a transaction is open: what a change needs from S3 (a link's object exists, a
deleted manifest's content) is checked first, then the write transaction re-reads the record and applies
the change (refusing it with 409 if the record changed in between).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection

from ims.artifacts.s3 import ArtifactError, ArtifactUnavailable
from ims.domain import schemas
from ims.domain.errors import Conflict, NotFound, Unavailable, Unprocessable
from ims.domain.links import link_location
from ims.domain.manifest import MIME_MANIFEST
from ims.domain.timeutil import format_timestamp, utcnow
from ims.services.context import ServiceContext
from ims.services.validation import check_link_unique, head_artifact, validate_image_link
from ims.store import repository
from ims.store.repository import RecordRepository
from ims.tasks.queue import enqueue, has_unfinished

KIND_PUBLIC_KEY = "public-key"
KIND_RECIPE = "recipe"
KIND_IMAGE = "image"

_REPOS: dict[str, RecordRepository] = {
    KIND_PUBLIC_KEY: repository.public_keys,
    KIND_RECIPE: repository.recipes,
    KIND_IMAGE: repository.images,
}


def resource_key(kind: str, record_id: str) -> str:
    return f"{kind}:{record_id}"


def _unreadable_manifest(link: dict[str, Any]) -> Unprocessable:
    return Unprocessable(
        f"Unable to read manifest file {link['path']}. Determine the specific information that is missing or "
        "invalid and then re-run the request with valid information."
    )


def _same_link(stored: dict[str, Any] | None, sent: dict[str, Any]) -> bool:
    if stored is None:
        return False
    return all(stored.get(name, "") == sent.get(name, "") for name in ("path", "etag", "type"))


def _unchanged(seen: dict[str, Any], record: dict[str, Any]) -> None:
    """The record checked before the transaction is still the one being changed."""
    if seen.get("link") != record.get("link"):
        raise Conflict()


class RecordService:
    """The operations every kind shares; recipes and images add their S3 side."""

    kind = KIND_PUBLIC_KEY

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = _REPOS[self.kind]

    # --- creates and changes: the body's validation (no I/O, may run on the event loop), then the S3 checks
    # and the transaction
    def prepare_create(self, body: Any) -> dict[str, Any]:
        """The record a create would store, from its body (400/422 when the body is wrong); no I/O."""
        raise NotImplementedError

    def create_prepared(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store a record from prepare_create; one with a link is checked against S3 first."""
        with self.ctx.database.write() as conn:
            self.repo.insert(conn, record)
        return record

    def prepare_patch(self, body: Any) -> dict[str, Any]:
        """The validated fields of a change (400/422 when the body is wrong); no I/O."""
        raise NotImplementedError

    def patch_prepared(self, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def needs_s3(prepared: dict[str, Any]) -> bool:
        """Whether storing a prepared record or change checks a link against S3 (a slow, blocking call)."""
        return prepared.get("link") is not None

    # --- reads
    def list(self, *, deleted: bool = False, limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        with self.ctx.database.read() as conn:
            return self.repo.fetch(conn, deleted=deleted, limit=limit, offset=offset)

    def get(self, record_id: str, *, deleted: bool = False) -> dict[str, Any]:
        with self.ctx.database.read() as conn:
            record = self.repo.get(conn, record_id, deleted=deleted)
        if record is None:
            raise NotFound()
        return record

    def _require(self, conn: Connection, record_id: str, *, deleted: bool = False) -> dict[str, Any]:
        """Read a record to change it: locked, so concurrent changes queue up instead of overwriting."""
        record = self.repo.get(conn, record_id, deleted=deleted, for_update=True)
        if record is None:
            raise NotFound()
        return record

    # --- deletes
    def soft_delete(self, record_id: str) -> None:
        with self.ctx.database.write() as conn:
            record = self._require(conn, record_id)
            queued = self._soft_delete(conn, record)
        if queued:  # a record without artifacts leaves the workers nothing to do: no need to wake them
            self.ctx.notify_tasks()

    def soft_delete_all(self) -> None:
        with self.ctx.database.write() as conn:
            for record in self.repo.fetch(conn, for_update=True):
                self._soft_delete(conn, record)
        self.ctx.notify_tasks()

    def hard_delete(self, record_id: str, *, cascade: bool = True) -> None:
        with self.ctx.database.write() as conn:
            record = self._require(conn, record_id)
            self._hard_delete(conn, record, cascade)
        self.ctx.notify_tasks()

    def hard_delete_all(self, *, cascade: bool = True) -> None:
        with self.ctx.database.write() as conn:
            for record in self.repo.fetch(conn, for_update=True):
                self._hard_delete(conn, record, cascade)
        self.ctx.notify_tasks()

    def undelete(self, record_id: str) -> None:
        with self.ctx.database.read() as conn:
            seen = self.repo.get(conn, record_id, deleted=True)
            if seen is None:
                raise NotFound()
            plan = self._undelete_facts(conn, seen)
        plan = self._undelete_check(seen, plan)  # S3, outside any transaction
        with self.ctx.database.write() as conn:
            record = self._require(conn, record_id, deleted=True)
            _unchanged(seen, record)
            self._undelete(conn, record, plan)
        self.ctx.notify_tasks()

    def undelete_all(self) -> None:
        # One transaction: any failure leaves every record where it was (the original left duplicates).
        with self.ctx.database.read() as conn:
            seen = {r["id"]: (r, self._undelete_facts(conn, r)) for r in self.repo.fetch(conn, deleted=True)}
        plans = {record_id: self._undelete_check(record, facts) for record_id, (record, facts) in seen.items()}
        with self.ctx.database.write() as conn:
            for record in self.repo.fetch(conn, deleted=True, for_update=True):
                if record["id"] not in plans:
                    continue  # deleted after the checks: left for the next undelete
                _unchanged(seen[record["id"]][0], record)
                self._undelete(conn, record, plans[record["id"]])
        self.ctx.notify_tasks()

    def purge(self, record_id: str) -> None:
        with self.ctx.database.write() as conn:
            record = self._require(conn, record_id, deleted=True)
            self._purge(conn, record)
        self.ctx.notify_tasks()

    def purge_all(self) -> None:
        with self.ctx.database.write() as conn:
            for record in self.repo.fetch(conn, deleted=True, for_update=True):
                self._purge(conn, record)
        self.ctx.notify_tasks()

    # --- hooks for kinds with artifacts
    def _soft_delete(self, conn: Connection, record: dict[str, Any]) -> bool:
        """Returns whether it queued work for the background workers."""
        record["deleted"] = format_timestamp(utcnow())
        self.repo.save(conn, record)
        return False

    def _hard_delete(self, conn: Connection, record: dict[str, Any], cascade: bool) -> None:
        self.repo.remove(conn, record["id"])

    def _undelete_facts(self, conn: Connection, record: dict[str, Any]) -> dict[str, Any]:
        """What the undelete needs from the database before its S3 checks."""
        return {"unfinished": has_unfinished(conn, resource_key(self.kind, record["id"]))}

    def _undelete_check(self, record: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        """The S3 side of an undelete, outside any transaction; raises to refuse it."""
        return facts

    def _undelete(self, conn: Connection, record: dict[str, Any], plan: dict[str, Any]) -> None:
        record.pop("deleted", None)
        self.repo.save(conn, record)

    def _purge(self, conn: Connection, record: dict[str, Any]) -> None:
        self.repo.remove(conn, record["id"])

    def _check_new_link(self, record_id: str, link: dict[str, Any] | None, check: Any) -> bool:
        """Before a PATCH's transaction: check a link that would be set (S3), unless nothing would be
        checked anyway (no link sent, the same link, or a record that already has one: 409 then)."""
        if link is None:
            return False
        with self.ctx.database.read() as conn:
            record = self.repo.get(conn, record_id)
            if record is None:
                raise NotFound()
            if _same_link(record.get("link"), link) or record.get("link") is not None:
                return False
            check_link_unique(conn, self.repo, self.kind, link, record_id)
        check(link)
        return True

    def _new_record(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "created": format_timestamp(utcnow()), **fields}


class PublicKeyService(RecordService):
    kind = KIND_PUBLIC_KEY

    def prepare_create(self, body: Any) -> dict[str, Any]:
        fields = schemas.load_input(schemas.PublicKeyInput, body)
        return self._new_record({"name": fields["name"], "public_key": fields["public_key"]})


class RecipeService(RecordService):
    kind = KIND_RECIPE

    def prepare_create(self, body: Any) -> dict[str, Any]:
        fields = schemas.load_input(schemas.RecipeInput, body)
        return self._new_record(
            {
                "name": fields["name"],
                "link": fields["link"],
                "recipe_type": fields["recipe_type"],
                "linux_distribution": fields["linux_distribution"],
                "template_dictionary": fields["template_dictionary"],
                "require_dkms": fields["require_dkms"],
                "arch": fields["arch"],
            }
        )

    def create_prepared(self, record: dict[str, Any]) -> dict[str, Any]:
        if record["link"] is not None:
            with self.ctx.database.read() as conn:
                check_link_unique(conn, self.repo, "recipe", record["link"], None)
            head_artifact(self.ctx, record["link"])
        with self.ctx.database.write() as conn:
            if record["link"] is not None:
                check_link_unique(conn, self.repo, "recipe", record["link"], None)
            self.repo.insert(conn, record)
        return record

    def prepare_patch(self, body: Any) -> dict[str, Any]:
        return schemas.load_input(schemas.RecipePatch, body)

    def patch_prepared(self, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        checked = self._check_new_link(record_id, fields.get("link"), lambda link: head_artifact(self.ctx, link))
        with self.ctx.database.write() as conn:
            record = self._require(conn, record_id)
            if "link" in fields:
                link = fields.pop("link")
                if not _same_link(record.get("link"), link):
                    if record.get("link") is not None:
                        raise Conflict()
                    check_link_unique(conn, self.repo, "recipe", link, record_id)
                    if not checked:
                        raise Conflict()  # the record changed while its link was checked
                    record["link"] = link
            record.update(fields)
            self.repo.save(conn, record)
        return record

    def _soft_delete(self, conn: Connection, record: dict[str, Any]) -> bool:
        link = record.get("link")
        if link is not None:
            moved = link_location(link).deleted()
            record["link"] = {"path": moved.url, "etag": link.get("etag", ""), "type": link.get("type", "s3")}
            enqueue(conn, "recipe.move", resource_key(self.kind, record["id"]),
                    {"id": record["id"], "source": link["path"], "target": moved.url})
        super()._soft_delete(conn, record)
        return link is not None

    def _undelete_check(self, record: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        link = record.get("link")
        if link is not None and link_location(link).undeleted() is not None and not facts["unfinished"]:
            head_artifact(self.ctx, link)
        return facts

    def _undelete(self, conn: Connection, record: dict[str, Any], plan: dict[str, Any]) -> None:
        link = record.get("link")
        if link is not None:
            location = link_location(link)
            restored = location.undeleted()
            if restored is not None:
                record["link"] = {"path": restored.url, "etag": link.get("etag", ""), "type": link.get("type")}
                enqueue(conn, "recipe.move", resource_key(self.kind, record["id"]),
                        {"id": record["id"], "source": location.url, "target": restored.url})
        super()._undelete(conn, record, plan)

    def _hard_delete(self, conn: Connection, record: dict[str, Any], cascade: bool) -> None:
        if cascade and record.get("link") is not None:
            enqueue(conn, "artifact.delete", resource_key(self.kind, record["id"]), {"path": record["link"]["path"]})
        super()._hard_delete(conn, record, cascade)

    def _purge(self, conn: Connection, record: dict[str, Any]) -> None:
        if record.get("link") is not None:
            enqueue(conn, "artifact.delete", resource_key(self.kind, record["id"]), {"path": record["link"]["path"]})
        super()._purge(conn, record)


class ImageService(RecordService):
    kind = KIND_IMAGE

    def prepare_create(self, body: Any) -> dict[str, Any]:
        fields = schemas.load_input(schemas.ImageInput, body)
        return self._new_record(
            {"name": fields["name"], "link": fields["link"], "arch": fields["arch"], "metadata": fields["metadata"]}
        )

    def create_prepared(self, record: dict[str, Any]) -> dict[str, Any]:
        if record["link"] is not None:
            with self.ctx.database.read() as conn:
                check_link_unique(conn, self.repo, "image", record["link"], None)
            validate_image_link(self.ctx, record["link"])
        with self.ctx.database.write() as conn:
            if record["link"] is not None:
                check_link_unique(conn, self.repo, "image", record["link"], None)
            self.repo.insert(conn, record)
        return record

    def prepare_patch(self, body: Any) -> dict[str, Any]:
        return schemas.load_input(schemas.ImagePatch, body)

    def patch_prepared(self, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        checked = self._check_new_link(
            record_id, fields.get("link"), lambda link: validate_image_link(self.ctx, link)
        )
        with self.ctx.database.write() as conn:
            record = self._require(conn, record_id)
            if "link" in fields:
                link = fields["link"]
                if not _same_link(record.get("link"), link):
                    if record.get("link") is not None:
                        raise Conflict()
                    check_link_unique(conn, self.repo, "image", link, record_id)
                    if not checked:
                        raise Conflict()  # the record changed while its link was checked
                    record["link"] = link
            if "name" in fields:
                record["name"] = fields["name"]
            if "arch" in fields:
                record["arch"] = fields["arch"]
            if "metadata" in fields:
                operation = fields["metadata"]
                metadata = dict(record.get("metadata") or {})
                if operation["operation"] == "set":
                    metadata[operation["key"]] = operation["value"]
                else:
                    metadata.pop(operation["key"], None)
                record["metadata"] = metadata
            self.repo.save(conn, record)
        return record

    def _deleted_manifest_url(self, image_id: str) -> str:
        return f"s3://{self.ctx.settings.s3_boot_images_bucket}/deleted/{image_id}/deleted_manifest.json"

    def _soft_delete(self, conn: Connection, record: dict[str, Any]) -> bool:
        link = record.get("link")
        if link is not None:
            deleted_manifest = self._deleted_manifest_url(record["id"])
            record["link"] = {"path": deleted_manifest, "etag": "", "type": link.get("type", "s3")}
            enqueue(conn, "image.soft_delete", resource_key(self.kind, record["id"]),
                    {"id": record["id"], "manifest": link["path"], "deleted_manifest": deleted_manifest,
                     "deleted": format_timestamp(utcnow())})
            super()._soft_delete(conn, record)
            self.repo.set_columns(conn, record["id"], restore_link=link)
            return True
        return super()._soft_delete(conn, record)

    def _undelete_facts(self, conn: Connection, record: dict[str, Any]) -> dict[str, Any]:
        return super()._undelete_facts(conn, record) | {"restore": self.repo.restore_link(conn, record["id"])}

    def _undelete_check(self, record: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        restore = facts["restore"]
        link = record.get("link")
        if restore is None and link is not None:
            restore = self._link_in_deleted_manifest(link)
        moving = restore is not None and link is not None and link["path"] != restore.get("path")
        if moving and link is not None and not facts["unfinished"]:
            try:
                found = self.ctx.request_artifacts.head(link_location(link))
            except ArtifactUnavailable as exc:
                raise Unavailable(f"S3 is not available: {exc}") from exc
            except ArtifactError:
                found = None
            if found is None:
                raise _unreadable_manifest(link)
        return facts | {"restore": restore}

    def _undelete(self, conn: Connection, record: dict[str, Any], plan: dict[str, Any]) -> None:
        restore = plan["restore"]
        link = record.get("link")
        if restore is not None and link is not None and link["path"] != restore.get("path"):
            enqueue(conn, "image.undelete", resource_key(self.kind, record["id"]),
                    {"id": record["id"], "deleted_manifest": link["path"]})
            record["link"] = restore
        super()._undelete(conn, record, plan)
        self.repo.set_columns(conn, record["id"], restore_link=None)

    def _link_in_deleted_manifest(self, link: dict[str, Any]) -> dict[str, Any] | None:
        """Images soft-deleted by the original IMS (imported data) have no stored restore link: as the
        original's undelete does, take the manifest entry of their deleted_manifest.json."""
        location = link_location(link)
        if not location.key.endswith("/deleted_manifest.json"):
            return None
        try:
            manifest = self.ctx.request_artifacts.read_json(location)
        except ArtifactUnavailable as exc:
            raise Unavailable(f"S3 is not available: {exc}") from exc
        except ArtifactError:
            raise _unreadable_manifest(link) from None
        for entry in manifest.get("artifacts", []) if isinstance(manifest, dict) else []:
            moved = entry.get("link") if isinstance(entry, dict) else None
            if entry.get("type") == MIME_MANIFEST and isinstance(moved, dict):
                restored = link_location(moved).undeleted()
                if restored is not None:
                    return {"path": restored.url, "etag": moved.get("etag", ""), "type": moved.get("type", "s3")}
        return None

    def _hard_delete(self, conn: Connection, record: dict[str, Any], cascade: bool) -> None:
        if cascade and record.get("link") is not None:
            enqueue(conn, "image.delete_artifacts", resource_key(self.kind, record["id"]),
                    {"manifest": record["link"]["path"]})
        super()._hard_delete(conn, record, cascade)

    def _purge(self, conn: Connection, record: dict[str, Any]) -> None:
        if record.get("link") is not None:
            enqueue(conn, "image.delete_artifacts", resource_key(self.kind, record["id"]),
                    {"manifest": record["link"]["path"]})
        super()._purge(conn, record)

"""Jobs: create (the original's POST flow), list, get, patch, delete; the job worker's start-up.

POST does every check of the original in its order and then only queues the job (`phase=queued`); a
job worker (ims.jobs.worker) launches it at once. Nothing slow happens inside the request.
"""

from __future__ import annotations

import builtins
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from ims.artifacts.s3 import ArtifactError, ArtifactUnavailable
from ims.domain import schemas
from ims.domain.errors import BadRequest, NotFound, Unavailable, ValidationFailed
from ims.domain.jobs import (
    FINAL_STATUSES,
    JOB_STATUSES,
    JOB_TYPES,
    default_kernel_file_name,
    default_ssh_containers,
    resolve_require_dkms,
    resource_names,
)
from ims.domain.links import link_location
from ims.domain.manifest import MANIFEST_VERSION, rootfs_artifacts
from ims.domain.timeutil import format_timestamp, parse_age, utcnow
from ims.jobs import state
from ims.jobs.factory import make_runner
from ims.jobs.logs import stream
from ims.jobs.nodekeys import ensure_node_key
from ims.jobs.ports import parse_range, pick_port
from ims.jobs.runner import Runner
from ims.jobs.spec import ssh_listen
from ims.jobs.worker import JobWorker
from ims.services.context import ServiceContext
from ims.services.remote_nodes import RemoteNodeService, remote_ssh_port
from ims.services.validation import head_artifact, link_repr, read_manifest
from ims.store import job_tokens, repository
from ims.store.tables import jobs as jobs_table

log = logging.getLogger(__name__)

_RERUN = (
    "Determine the specific information that is missing or invalid and then re-run the request with valid information."
)
_PLEASE = (
    "Please determine the specific information that is missing or invalid and then re-run the request with valid "
    "information."
)
MSG_CREATE_SSH = f"User defined ssh containers during image create are not currently supported. {_RERUN}"
MSG_ONE_SSH = (
    "Only one SSH container is currently supported. Please remove additional containers, determine the specific "
    "information that is missing or invalid and then re-run the request with valid information."
)
MSG_PACKER = (
    "Recipes of type packer are not supported: IMS builds images from kiwi-ng recipes only. Use a kiwi-ng recipe "
    "and then re-run the request."
)
_FILE_NAME_FIELDS = ("kernel_file_name", "initrd_file_name", "kernel_parameters_file_name")


def _filter_error(what: str, value: str) -> BadRequest:
    # The original's filter errors carry the message as the problem's title, with no detail.
    return BadRequest(f"Unsupported {what} {value} in query parameters. {_RERUN}", title_only=True)


def _corrupt_manifest(image_id: str) -> BadRequest:
    return BadRequest(
        f"The manifest.json file is corrupt or invalid for IMS image_id={image_id}. Could not determine the manifest "
        f"version or manifest version is unsupported. {_RERUN}"
    )


def _file_name_errors(fields: dict[str, Any]) -> dict[str, list[str]]:
    """Boot file names become paths under the image's /boot in a root process: plain names only."""
    errors: dict[str, list[str]] = {}
    for name in _FILE_NAME_FIELDS:
        value = fields.get(name) or ""
        if value in (".", "..") or "/" in value or any(ord(ch) < 32 for ch in value):
            errors[name] = [f"{name} must be a plain file name (no '/', not '.' or '..', no control characters)."]
    if "\0" in fields.get("image_root_archive_name", ""):
        errors["image_root_archive_name"] = ["image_root_archive_name must not contain a NUL character."]
    return errors


class JobService:
    def __init__(self, ctx: ServiceContext, runner: Runner | None = None) -> None:
        self.ctx = ctx
        self.runner = runner or make_runner(ctx.settings, ctx.database)
        self.repo = repository.jobs

    # --- reads
    def list(
        self,
        *,
        statuses: list[str] | None = None,
        job_type: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        where: list[Any] = []
        errors: dict[str, list[str]] = {}
        if statuses:
            wanted = [status.lower() for status in statuses]
            if any(status not in JOB_STATUSES for status in wanted):
                errors["status"] = ["Must be one of: " + ", ".join(JOB_STATUSES) + "."]
            where.append(jobs_table.c.status.in_(wanted))
        if job_type:
            if job_type not in JOB_TYPES:
                errors["job_type"] = ["Must be one of: " + ", ".join(JOB_TYPES) + "."]
            where.append(jobs_table.c.job_type == job_type)
        if errors:
            # The shape every list's bad query value gets (the app's query-validation answer).
            raise BadRequest("Invalid query parameters.", errors)
        with self.ctx.database.read() as conn:
            return self.repo.fetch(conn, limit=limit, offset=offset, where=where)

    def get(self, job_id: str) -> dict[str, Any]:
        with self.ctx.database.read() as conn:
            record = self.repo.get(conn, job_id)
        if record is None:
            raise NotFound()
        return record

    # --- create
    def create(self, body: Any) -> dict[str, Any]:
        fields = schemas.load_input(schemas.JobInput, body)
        errors = _file_name_errors(fields)
        if errors:
            raise ValidationFailed(errors)
        job_type: str = fields["job_type"]
        given = fields.get("ssh_containers")
        if job_type == "create" and given:
            raise BadRequest(MSG_CREATE_SSH)
        containers: list[dict[str, Any]] | None = default_ssh_containers(job_type, fields["enable_debug"], given)
        if job_type == "create" and not fields["enable_debug"] and given is None:
            containers = None  # the original leaves an absent list absent (null), an empty one empty
        if containers and len(containers) > 1:
            raise BadRequest(MSG_ONE_SSH)

        artifact_id = str(fields["artifact_id"])
        with self.ctx.database.read() as conn:
            source_repo = repository.recipes if job_type == "create" else repository.images
            source = source_repo.get(conn, artifact_id)
            key = repository.public_keys.get(conn, str(fields["public_key_id"]))
        launch = self._download(job_type, artifact_id, source)
        assert source is not None  # _download refused a missing source
        arch = str(source.get("arch") or "x86_64")
        kernel = fields["kernel_file_name"] or default_kernel_file_name(arch)
        require_dkms = resolve_require_dkms(
            arch=arch,
            job_type=job_type,
            user_sent=isinstance(body, dict) and "require_dkms" in body,
            user_value=fields["require_dkms"],
            recipe_value=source.get("require_dkms") if job_type == "create" else None,
            dkms_enabled_globally=self.ctx.settings.dkms_enabled_globally,
        )
        if key is None:
            raise BadRequest(
                f"Invalid public_key_id value in job request. No IMS public-key record found matching "
                f"id={fields['public_key_id']}"
            )
        launch["public_key"] = key.get("public_key", "")

        job_id = str(uuid.uuid4())
        names = resource_names(job_id, job_type)
        settings = self.ctx.settings
        record: dict[str, Any] = {
            "created": format_timestamp(utcnow()),
            "job_type": job_type,
            "artifact_id": artifact_id,
            "build_env_size": fields.get("build_env_size") or settings.default_ims_image_size,
            "id": job_id,
            "enable_debug": fields["enable_debug"],
            "public_key_id": str(fields["public_key_id"]),
            "kubernetes_job": names.job,
            "kubernetes_service": names.service,
            "kubernetes_configmap": names.configmap,
            "ssh_containers": containers,
            "status": "creating",
            "image_root_archive_name": fields["image_root_archive_name"],
            "initrd_file_name": fields["initrd_file_name"],
            "kernel_file_name": kernel,
            "resultant_image_id": None,
            "kubernetes_namespace": settings.default_ims_job_namespace,
            "kernel_parameters_file_name": fields["kernel_parameters_file_name"],
            "arch": arch,
            "require_dkms": require_dkms,
            "kubernetes_pvc": names.pvc,
            "job_mem_size": fields.get("job_mem_size") or settings.default_ims_job_mem_size,
            "remote_build_node": "",
            "kubernetes_secret": names.secret,
            "status_reason": None,
        }
        remote_nodes = RemoteNodeService(self.ctx)
        candidates = remote_nodes.candidates_or_none(arch, job_type)  # probed before the transaction
        with self.ctx.database.write() as conn:
            # A ready node of the job's arch with the fewest jobs runs it; none: this host (docs/remote-nodes.md).
            node = remote_nodes.choose(conn, candidates)
            record["remote_build_node"] = node or ""
            if containers:
                port = remote_ssh_port(self.ctx.settings, state.used_ssh_ports(conn)) if node else self._ssh_port(conn)
            else:
                port = None
            for container in containers or []:
                container["status"] = "pending"
                # Both names lead to the sshd of our runner: there is no cluster DNS, so `cluster.local`
                # carries the same real address (IMS_SSH_HOST, or the node's) as `customer_access`.
                endpoint = {"host": node or settings.ssh_host, "port": port}
                container["connection_info"] = {"customer_access": dict(endpoint), "cluster.local": dict(endpoint)}
            self.repo.insert(conn, record, phase=state.QUEUED, ssh_port=port, launch=launch, status_changed=utcnow())
            job_tokens.create(conn, job_id)  # the token itself is minted at launch (ims.store.job_tokens)
        self.ctx.notify_tasks()
        return record

    def _ssh_port(self, conn: Any) -> int:
        try:
            ports = parse_range(self.ctx.settings.job_ssh_ports)
        except ValueError as exc:
            raise Unavailable(f"IMS_JOB_SSH_PORTS is invalid: {exc}") from None
        return pick_port(ports, state.used_ssh_ports(conn), ssh_listen(self.ctx.settings))

    def _download(self, job_type: str, artifact_id: str, source: dict[str, Any] | None) -> dict[str, Any]:
        """The original's artifact lookup: what the job downloads, with its md5; presigning is checked."""
        kind = "recipe" if job_type == "create" else "image"
        if source is None:
            raise BadRequest(
                f"Invalid artifact_id value in job request. No IMS {kind} record found matching id={artifact_id}. "
                f"{_RERUN}"
            )
        link = source.get("link")
        if not link:
            raise BadRequest(f"The IMS {kind} does not have an artifact_link for {kind}_id={artifact_id}. {_PLEASE}")
        if job_type == "create":
            if source.get("recipe_type") == "packer":
                raise BadRequest(MSG_PACKER)
            md5 = head_artifact(self.ctx, link)
            self._check_presign(link)
            dictionary = {item["key"]: item["value"] for item in source.get("template_dictionary") or []}
            return {
                "download_path": link["path"],
                "md5": md5,
                "template_dictionary": dictionary,
                "recipe_type": source.get("recipe_type"),
                "linux_distribution": source.get("linux_distribution"),
            }
        head_artifact(self.ctx, link)
        try:
            manifest = read_manifest(self.ctx, link)
        except ArtifactUnavailable as exc:
            raise Unavailable(f"S3 is not available: {exc}") from exc
        except ArtifactError:
            raise _corrupt_manifest(artifact_id) from None  # the original answers 500 here
        rootfs = self._rootfs(artifact_id, manifest)
        rootfs_link = rootfs.get("link")
        if not rootfs_link or not isinstance(rootfs_link, dict):
            raise BadRequest(
                f"The rootfs referenced in the manifest.json for ims_image_id={artifact_id} does not have a artifact "
                f"link. {_PLEASE}"
            )
        s3_md5 = head_artifact(self.ctx, rootfs_link)
        self._check_presign(rootfs_link)
        return {"download_path": rootfs_link.get("path"), "md5": s3_md5 or str(rootfs.get("md5") or "")}

    @staticmethod
    def _rootfs(image_id: str, manifest: Any) -> dict[str, Any]:
        if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
            raise _corrupt_manifest(image_id)
        artifacts = manifest.get("artifacts")
        if not isinstance(artifacts, list) or any(not isinstance(a, dict) or "type" not in a for a in artifacts):
            raise _corrupt_manifest(image_id)
        found = rootfs_artifacts(manifest)
        if not found:
            raise BadRequest(
                f"Error reading the manifest.json for IMS image_id={image_id}. The manifest does not include any "
                f"rootfs artifacts. {_RERUN}"
            )
        if len(found) > 1:
            raise BadRequest(
                f"Error reading the manifest.json for IMS image_id={image_id}. The manifest includes multiple rootfs "
                f"artifacts. {_RERUN}"
            )
        return found[0]

    def _check_presign(self, link: dict[str, Any]) -> None:
        try:
            self.ctx.artifacts.presign_get(link_location(link))
        except Exception:
            raise BadRequest(
                f"Unable to generate a download url for the s3 artifact {link_repr(link)}. {_PLEASE}"
            ) from None

    # --- patch
    def patch(self, job_id: str, body: Any) -> dict[str, Any]:
        with self.ctx.database.write() as conn:
            record = state.lock_record(conn, job_id)
            if record is None:
                raise NotFound()
            fields = schemas.load_input(schemas.JobPatch, body)
            if "resultant_image_id" in fields:
                value = fields["resultant_image_id"]
                record["resultant_image_id"] = str(value) if value is not None else None
            if "status" in fields:
                status = fields["status"]
                if "status_reason" in fields:
                    reason = fields["status_reason"]
                else:  # a new status without a reason drops the old one
                    reason = record.get("status_reason") if status == record.get("status") else None
                state.apply_status(conn, record, status, reason)
            else:
                if "status_reason" in fields:
                    record["status_reason"] = fields["status_reason"]
                self.repo.save(conn, record)
        if record.get("status") in FINAL_STATUSES:
            self.ctx.notify_tasks()  # its worker stops the process if it does not end by itself
        return record

    # --- delete
    def delete(self, job_id: str) -> None:
        with self.ctx.database.write() as conn:
            row = state.load(conn, job_id, lock=True)
            if row is None or row.deleted:
                raise NotFound()
            cleanup = self._delete_row(conn, row)
        self._after_delete(cleanup)

    def delete_many(self, statuses: builtins.list[str], job_type: str | None, age: str | None) -> None:
        wanted = [status.lower() for status in statuses]
        for status in wanted:
            if status not in JOB_STATUSES:
                raise _filter_error("status", status)
        if job_type and job_type not in JOB_TYPES:
            raise _filter_error("job_type", job_type)
        where: list[Any] = [jobs_table.c.deleted.is_(None)]
        if wanted:
            where.append(jobs_table.c.status.in_(wanted))
        if job_type:
            where.append(jobs_table.c.job_type == job_type)
        if age is not None:
            try:
                delta = parse_age(age)
            except ValueError:
                raise _filter_error("age", age) from None
            where.append(jobs_table.c.created < utcnow() - timedelta(seconds=delta.total_seconds()))
        cleanups: builtins.list[str] = []
        with self.ctx.database.write() as conn:
            for row in state.rows(conn, *where):
                cleanup = self._delete_row(conn, row)
                if cleanup is not None:
                    cleanups.append(cleanup)
        for job_id in cleanups:
            self._after_delete(job_id)
        self.ctx.notify_tasks()

    def _delete_row(self, conn: Any, row: state.JobRow) -> str | None:
        """Delete a job inside the caller's transaction; returns a job id whose local directory to remove."""
        job_tokens.revoke(conn, row.id)
        if row.phase in state.ACTIVE_PHASES:
            # Its worker stops the process, removes the directory and then the row.
            state.tombstone(conn, [row.id])
            return None
        self.repo.remove(conn, row.id)
        if row.runner is None or self.runner.can_watch(row.runner):
            return row.id
        return None  # finished on another host; its directory stays there (the reconciler there skips it)

    def _after_delete(self, cleanup: str | None) -> None:
        if cleanup is not None:
            try:
                self.runner.cleanup(cleanup, keep_log=False)
            except Exception as exc:  # the record is gone either way; a leftover directory is only disk space
                log.warning("deleted job %s: could not remove its directory: %s", cleanup, exc)
        self.ctx.notify_tasks()

    # --- logs
    def log_path(self, job_id: str) -> Path:
        self.get(job_id)
        return self.runner.log_path(job_id)

    def log_chunks(self, job_id: str, follow: bool) -> AsyncIterator[bytes]:
        """The job's log from its start; with `follow`, what is appended until the job ends."""
        return stream(self.log_path(job_id), follow=follow, finished=self.finished(job_id))

    def finished(self, job_id: str) -> Callable[[], bool]:
        """For following a log: true once the job's process is gone for good (or the job was deleted)."""

        def check() -> bool:
            with self.ctx.database.read() as conn:
                row = state.load(conn, job_id)
            return row is None or row.deleted or (row.final and row.phase in (state.DONE, state.QUEUED))

        return check


def start_job_workers(ctx: ServiceContext) -> Callable[[], None]:
    """WORKER_HOOKS entry: the job worker (with its reconciler) for this process."""
    try:
        parse_range(ctx.settings.job_ssh_ports)
        runner = make_runner(ctx.settings, ctx.database, worker=True)
    except ValueError as exc:
        raise SystemExit(f"ims: {exc}") from None
    ensure_node_key(ctx.settings)
    worker = JobWorker(ctx.database, ctx.settings, ctx.artifacts, runner)
    ctx.on_task_queued.append(worker.wake)
    worker.start()
    return worker.stop

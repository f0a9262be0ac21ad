"""Typed calls for every IMS endpoint, built on `ImsClient.request`.

`Ims(client)` groups them the way `cray ims` does: `ims.public_keys`, `ims.recipes`, `ims.images`, `ims.jobs`,
`ims.deleted.images` (and `.recipes`, `.public_keys`), `ims.remote_build_nodes`. Records are the server's
JSON objects as dicts; nothing is renamed or dropped on the way.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ims.client.http import ImsApiError, ImsClient, _record

Record = dict[str, Any]
Link = dict[str, str]


def link(path: str, etag: str = "", link_type: str = "s3") -> Link:
    return {"path": path, "etag": etag, "type": link_type}


def template_list(values: Mapping[str, str] | None) -> list[dict[str, str]] | None:
    """The wire form of a template dictionary: a list of `{key, value}` pairs."""
    if values is None:
        return None
    return [{"key": key, "value": value} for key, value in values.items()]


def _records(value: Any) -> list[Record]:
    if not isinstance(value, list):
        raise ImsApiError(0, f"expected a JSON list, got {type(value).__name__}")
    return value


def _without_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


class Collection:
    """list/get/create/delete on `/<version>/<resource>` and `/<version>/<resource>/{id}`."""

    resource = ""

    def __init__(self, client: ImsClient, version: str | None = None) -> None:
        self.client = client
        self.version = version

    def _path(self, suffix: str = "") -> str:
        return self.client.path(f"/{self.resource}{suffix}", self.version)

    def list(self, *, limit: int | None = None, offset: int | None = None) -> list[Record]:
        params = _without_none({"limit": limit, "offset": offset})
        return _records(self.client.request("GET", self._path(), params=params or None))

    def get(self, record_id: str) -> Record:
        return _record(self.client.request("GET", self._path(f"/{record_id}")))

    def create_from(self, body: Mapping[str, Any]) -> Record:
        return _record(self.client.request("POST", self._path(), json=dict(body)))

    def patch(self, record_id: str, body: Mapping[str, Any]) -> Record:
        return _record(self.client.request("PATCH", self._path(f"/{record_id}"), json=dict(body)))

    def delete(self, record_id: str) -> None:
        """v3: soft delete (see `Ims.deleted`); v2: permanent."""
        self.client.request("DELETE", self._path(f"/{record_id}"))

    def delete_all(self) -> None:
        self.client.request("DELETE", self._path())


class PublicKeys(Collection):
    resource = "public-keys"

    def create(self, name: str, public_key: str) -> Record:
        return self.create_from({"name": name, "public_key": public_key})


class ArtifactCollection(Collection):
    def purge(self, record_id: str, *, cascade: bool = False) -> None:
        """Remove a record for good, bypassing the deleted area (v2 DELETE); S3 objects only with `cascade`."""
        path = self.client.path(f"/{self.resource}/{record_id}", "v2")
        self.client.request("DELETE", path, params={"cascade": "true" if cascade else "false"})


class Recipes(ArtifactCollection):
    resource = "recipes"

    def create(
        self,
        name: str,
        *,
        linux_distribution: str,
        recipe_type: str = "kiwi-ng",
        arch: str | None = None,
        require_dkms: bool | None = None,
        template_dictionary: Mapping[str, str] | None = None,
        link: Link | None = None,
    ) -> Record:
        body = {"name": name, "recipe_type": recipe_type, "linux_distribution": linux_distribution}
        body |= _without_none(
            {
                "arch": arch,
                "require_dkms": require_dkms,
                "template_dictionary": template_list(template_dictionary),
                "link": link,
            }
        )
        return self.create_from(body)

    def update(
        self,
        record_id: str,
        *,
        name: str | None = None,
        link: Link | None = None,
        arch: str | None = None,
        require_dkms: bool | None = None,
        template_dictionary: Mapping[str, str] | None = None,
    ) -> Record:
        body = {
            "name": name,
            "link": link,
            "arch": arch,
            "require_dkms": require_dkms,
            "template_dictionary": template_list(template_dictionary),
        }
        return self.patch(record_id, _without_none(body))


class Images(ArtifactCollection):
    resource = "images"

    def create(
        self, name: str, *, arch: str | None = None, metadata: Mapping[str, str] | None = None, link: Link | None = None
    ) -> Record:
        body = {"name": name} | _without_none(
            {"arch": arch, "metadata": dict(metadata) if metadata is not None else None, "link": link}
        )
        return self.create_from(body)

    def update(
        self,
        record_id: str,
        *,
        name: str | None = None,
        link: Link | None = None,
        arch: str | None = None,
        metadata_operation: str | None = None,
        metadata_key: str | None = None,
        metadata_value: str | None = None,
    ) -> Record:
        body: dict[str, Any] = _without_none({"name": name, "link": link, "arch": arch})
        if metadata_operation is not None:
            body["metadata"] = _without_none(
                {"operation": metadata_operation, "key": metadata_key, "value": metadata_value}
            )
        return self.patch(record_id, body)

    def set_label(self, record_id: str, key: str, value: str = "") -> Record:
        return self.update(record_id, metadata_operation="set", metadata_key=key, metadata_value=value)

    def remove_label(self, record_id: str, key: str) -> Record:
        return self.update(record_id, metadata_operation="remove", metadata_key=key)


class Jobs(Collection):
    resource = "jobs"

    def create(
        self,
        *,
        job_type: str,
        artifact_id: str,
        public_key_id: str,
        image_root_archive_name: str,
        enable_debug: bool | None = None,
        build_env_size: int | None = None,
        job_mem_size: int | None = None,
        kernel_file_name: str | None = None,
        initrd_file_name: str | None = None,
        kernel_parameters_file_name: str | None = None,
        require_dkms: bool | None = None,
        ssh_containers: Sequence[Mapping[str, Any]] | None = None,
    ) -> Record:
        body = {
            "job_type": job_type,
            "artifact_id": artifact_id,
            "public_key_id": public_key_id,
            "image_root_archive_name": image_root_archive_name,
        } | _without_none(
            {
                "enable_debug": enable_debug,
                "build_env_size": build_env_size,
                "job_mem_size": job_mem_size,
                "kernel_file_name": kernel_file_name,
                "initrd_file_name": initrd_file_name,
                "kernel_parameters_file_name": kernel_parameters_file_name,
                "require_dkms": require_dkms,
                "ssh_containers": [dict(item) for item in ssh_containers] if ssh_containers is not None else None,
            }
        )
        return self.create_from(body)

    def list(
        self,
        *,
        status: Sequence[str] = (),
        job_type: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> builtins.list[Record]:
        """All jobs, or (our server's filters) only those in `status` and of `job_type`."""
        params: dict[str, Any] = _without_none({"job_type": job_type, "limit": limit, "offset": offset})
        if status:
            params["status"] = builtins.list(status)
        return _records(self.client.request("GET", self._path(), params=params or None))

    def set_status(self, job_id: str, status: str, reason: str | None = None) -> Record:
        return self.client.set_job_status(job_id, status, reason)

    def delete_matching(
        self, *, status: Sequence[str] = (), job_type: str | None = None, age: str | None = None
    ) -> None:
        """DELETE /jobs with the original's filters, combined with AND; no filter deletes every job."""
        params: dict[str, Any] = _without_none({"job_type": job_type, "age": age})
        if status:
            params["status"] = list(status)
        self.client.request("DELETE", self._path(), params=params or None)

    def logs(self, job_id: str, *, follow: bool = False) -> Iterator[str]:
        """The job's log as text chunks; with `follow`, keeps streaming until the job ends."""
        params = {"follow": "true"} if follow else None
        with self.client.stream("GET", self._path(f"/{job_id}/logs"), params=params) as response:
            yield from response.iter_text()


class Deleted(Collection):
    """`/v3/deleted/<resource>`: soft-deleted records, to undelete or remove for good."""

    def __init__(self, client: ImsClient, resource: str) -> None:
        super().__init__(client, "v3")
        self.resource = f"deleted/{resource}"

    def undelete(self, record_id: str) -> None:
        self.client.request("PATCH", self._path(f"/{record_id}"), json={"operation": "undelete"})

    def undelete_all(self) -> None:
        self.client.request("PATCH", self._path(), json={"operation": "undelete"})

    # DELETE here is permanent: the record and its S3 objects go.
    purge = Collection.delete
    purge_all = Collection.delete_all


class DeletedCollections:
    def __init__(self, client: ImsClient) -> None:
        self.public_keys = Deleted(client, "public-keys")
        self.recipes = Deleted(client, "recipes")
        self.images = Deleted(client, "images")

    def of(self, resource: str) -> Deleted:
        """By the CLI name: `images`, `recipes` or `public-keys`."""
        found: Deleted = getattr(self, resource.replace("-", "_"))
        return found


class RemoteBuildNodes(Collection):
    resource = "remote-build-nodes"

    def __init__(self, client: ImsClient) -> None:
        super().__init__(client, "v3")

    def create(self, xname: str) -> Record:
        return self.create_from({"xname": xname})

    def status_all(self) -> list[Record]:
        return _records(self.client.request("GET", self._path("/status")))

    def status(self, xname: str) -> Record:
        return _record(self.client.request("GET", self._path(f"/status/{xname}")))

    def public_key(self) -> str:
        """IMS's SSH public key: the line for the nodes' root authorized_keys (ours)."""
        return str(_record(self.client.request("GET", self._path("/public-key"))).get("public_key", ""))


class Ims:
    """Every endpoint of one IMS; v3 unless `version` says otherwise (remote nodes and deleted/* are v3 only)."""

    def __init__(self, client: ImsClient, version: str | None = None) -> None:
        self.client = client
        self.public_keys = PublicKeys(client, version)
        self.recipes = Recipes(client, version)
        self.images = Images(client, version)
        self.jobs = Jobs(client, version)
        self.deleted = DeletedCollections(client)
        self.remote_build_nodes = RemoteBuildNodes(client)

    def version(self) -> str:
        return str(_record(self.client.request("GET", "/version")).get("version", ""))

    def ready(self) -> bool:
        try:
            self.client.request("GET", "/healthz/ready")
        except ImsApiError:
            return False
        return True

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Ims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

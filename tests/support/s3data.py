"""Real artifacts in SeaweedFS for the tests: an image (rootfs, kernel, initrd + manifest v1.0) and a recipe
archive, laid out as ims-python-helper lays them out, plus polling helpers for the background S3 moves."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ims.artifacts.s3 import ArtifactStore
from ims.client.artifacts import upload_artifact_set
from ims.domain.links import S3Location, make_link

BOOT_BUCKET = "boot-images"
RECIPE_BUCKET = "ims"
_CHUNK = 8 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    bucket: str
    manifest: dict[str, Any]
    link: dict[str, Any]  # what a client PATCHes onto the image: the manifest's path, etag and type

    @property
    def manifest_key(self) -> str:
        return S3Location.parse(self.link["path"]).key

    @property
    def artifact_keys(self) -> list[str]:
        return [S3Location.parse(entry["link"]["path"]).key for entry in self.manifest["artifacts"]]

    @property
    def keys(self) -> list[str]:
        """Every object of the image, artifacts in manifest order then the manifest."""
        return [*self.artifact_keys, self.manifest_key]


@dataclass(frozen=True)
class StoredRecipe:
    recipe_id: str
    bucket: str
    key: str
    etag: str

    @property
    def link(self) -> dict[str, Any]:
        return make_link(S3Location(self.bucket, self.key), self.etag)


def random_file(path: Path, size: int) -> Path:
    """Incompressible bytes, written in chunks so a large file never sits in memory."""
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = min(left, _CHUNK)
            out.write(os.urandom(chunk))
            left -= chunk
    return path


def put_image(
    store: ArtifactStore,
    *,
    image_id: str | None = None,
    bucket: str = BOOT_BUCKET,
    rootfs_size: int = 4096,
    rootfs: Path | None = None,
    without_md5: Iterable[str] = (),
) -> StoredImage:
    """Upload rootfs, kernel and initrd under `<bucket>/<image_id>/` and the manifest that lists them.

    `without_md5` names artifacts (rootfs, kernel, initrd) whose manifest entry loses its `md5`, as
    manifests written by old tools can lack it.
    """
    image_id = image_id or str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="ims-s3data-") as tmp:
        work = Path(tmp)
        files = {
            "rootfs": rootfs if rootfs is not None else random_file(work / "rootfs", rootfs_size),
            "kernel": random_file(work / "kernel", 1024),
            "initrd": random_file(work / "initrd", 2048),
        }
        uploaded = upload_artifact_set(
            store,
            bucket=bucket,
            image_id=image_id,
            files=files,
            metadata={"x-shasta-ims-image-id": image_id},
        )
    manifest, link = uploaded.manifest, uploaded.manifest_link
    dropped = set(without_md5)
    if dropped:
        names = {f"{image_id}/{name}" for name in dropped}
        for entry in manifest["artifacts"]:
            if S3Location.parse(entry["link"]["path"]).key in names:
                entry.pop("md5", None)
        link = put_manifest(store, S3Location.parse(link["path"]), manifest)
    return StoredImage(image_id, bucket, manifest, link)


def register_image(
    api: httpx.Client, store: ArtifactStore, name: str = "img", **upload: Any
) -> tuple[dict[str, Any], StoredImage]:
    """The sequence ims-python-helper follows: POST the record, upload under its id, PATCH the link on."""
    record = api.post("/v3/images", json={"name": name, "metadata": {"k": "v"}}).json()
    stored = put_image(store, image_id=record["id"], **upload)
    response = api.patch(f"/v3/images/{record['id']}", json={"link": stored.link})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result, stored


def put_manifest(store: ArtifactStore, location: S3Location, manifest: Any) -> dict[str, Any]:
    """Write any manifest body (valid or not) and return a link to it."""
    etag = store.put_bytes(location, json.dumps(manifest).encode(), "application/json")
    return make_link(location, etag)


def recipe_archive(name: str = "test-recipe") -> bytes:
    """A small Kiwi-NG recipe as a gzip'd tarball: config.xml and a config.sh."""
    files = {
        "config.xml": (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<image schemaversion="7.4" name="{name}">\n'
            '  <preferences><version>1.0.0</version><packagemanager>zypper</packagemanager>'
            '<type image="tbz"/></preferences>\n'
            '  <packages type="image"><package name="bash"/></packages>\n'
            "</image>\n"
        ),
        "config.sh": "#!/bin/bash\nset -e\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o755 if member.endswith(".sh") else 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def put_recipe(store: ArtifactStore, *, recipe_id: str | None = None, bucket: str = RECIPE_BUCKET) -> StoredRecipe:
    """Upload `recipes/<id>/recipe.tar.gz` as ims-python-helper does."""
    recipe_id = recipe_id or str(uuid.uuid4())
    key = f"recipes/{recipe_id}/recipe.tar.gz"
    etag = store.put_bytes(S3Location(bucket, key), recipe_archive(), "application/x-compressed-tar")
    return StoredRecipe(recipe_id, bucket, key, etag)


# --- waiting for background moves


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll until `predicate` returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def keys_under(store: ArtifactStore, bucket: str, prefix: str) -> set[str]:
    return set(store.list_keys(bucket, prefix))


def exists(store: ArtifactStore, bucket: str, key: str) -> bool:
    return store.head(S3Location(bucket, key)) is not None


def wait_for_objects(
    store: ArtifactStore,
    bucket: str,
    *,
    present: Iterable[str] = (),
    absent: Iterable[str] = (),
    timeout: float = 30.0,
) -> None:
    """Wait until every `present` key exists and every `absent` key is gone."""
    want, gone = list(present), list(absent)

    def settled() -> bool:
        return all(exists(store, bucket, key) for key in want) and not any(exists(store, bucket, key) for key in gone)

    wait_for(settled, timeout, what=f"objects present={want} absent={gone} in {bucket}")

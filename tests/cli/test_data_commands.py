"""`ims data import` and `ims data export`, run as the real command, then checked through a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support import original_data as data
from tests.support.s3data import BOOT_BUCKET, RECIPE_BUCKET, put_image, put_recipe, wait_for_objects
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location
from ims.domain.manifest import MIME_MANIFEST, build_manifest

TOTAL = sum(len(records) for records in data.all_files().values())


def ims(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMS_", "S3_"))}
    env["IMS_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "ims", "data", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def serve(s3_env: dict[str, str]) -> Iterator[Any]:
    started: list[ImsServer] = []

    def start(data_dir: Path) -> httpx.Client:
        server = start_ims_server(data_dir, s3_env)
        started.append(server)
        return httpx.Client(base_url=server.url, timeout=30)

    yield start
    for server in started:
        server.stop()


def subset(record: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in like}


@pytest.mark.slow
def test_import_then_serve(tmp_path: Path, serve: Any) -> None:
    data_dir = tmp_path / "ims"
    result = ims(data_dir, "import", str(data.write_files(tmp_path / "in")))
    assert result.returncode == 0, result.stderr
    assert f"imported {TOTAL} records" in result.stdout
    assert "v2.4_jobs.json: 2 records" in result.stdout

    api = serve(data_dir)
    for prefix in ("", "/v2", "/v3"):
        assert api.get(f"{prefix}/public-keys").json() == data.public_keys()
        assert api.get(f"{prefix}/recipes").json() == data.recipes()
        assert api.get(f"{prefix}/images").json() == data.images()
    assert api.get("/v3/deleted/public-keys").json() == data.deleted_public_keys()
    assert api.get("/v3/deleted/recipes").json() == data.deleted_recipes()
    assert api.get(f"/v3/deleted/images/{data.IMAGE_DELETED}").json() == data.deleted_images()[0]
    assert api.get("/v3/remote-build-nodes").json() == data.remote_build_nodes()
    for job in data.jobs():
        response = api.get(f"/v3/jobs/{job['id']}")
        assert response.status_code == 200, response.text
        assert subset(response.json(), job) == job


def test_bad_input_imports_nothing(tmp_path: Path) -> None:
    files = data.all_files()
    files["v2.1_images.json"][1]["metadata"] = {"k": 1}
    files["v2.4_jobs.json"][1]["status"] = "running"
    data_dir = tmp_path / "ims"
    result = ims(data_dir, "import", str(data.write_files(tmp_path / "in", files)))
    assert result.returncode == 1
    assert f'error: v2.1_images.json[1] {data.IMAGE_B}: {{"metadata": {{"k": {{"value": ["Not a valid string."]}}}}}}' \
        in result.stderr
    assert f"error: v2.4_jobs.json[1] {data.JOB_CUSTOMIZE}: " in result.stderr
    assert "nothing imported: 2 problem(s)" in result.stderr

    exported = ims(data_dir, "export", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert data.read_files(tmp_path / "out") == {name: [] for name in data.all_files()}


@pytest.mark.slow
def test_existing_ids_replace_and_dry_run(tmp_path: Path) -> None:
    data_dir, source = tmp_path / "ims", data.write_files(tmp_path / "in")
    checked = ims(data_dir, "import", "--dry-run", str(source))
    assert checked.returncode == 0 and f"checked {TOTAL} records; nothing stored" in checked.stdout
    assert ims(data_dir, "import", str(source)).returncode == 0
    again = ims(data_dir, "import", str(source))
    assert again.returncode == 1
    assert again.stderr.count("a record with this id is already in the database") == TOTAL
    assert ims(data_dir, "import", "--replace", str(source)).returncode == 0


def test_missing_directory(tmp_path: Path) -> None:
    result = ims(tmp_path / "ims", "import", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "not a directory" in result.stderr


@pytest.mark.slow
def test_export_of_records_made_through_the_api(tmp_path: Path, serve: Any, artifact_store: ArtifactStore) -> None:
    data_dir = tmp_path / "ims"
    api = serve(data_dir)
    key = api.post("/v3/public-keys", json={"name": "k", "public_key": data.SSH_KEY}).json()
    gone = api.post("/v3/public-keys", json={"name": "gone", "public_key": data.SSH_KEY}).json()
    api.delete(f"/v3/public-keys/{gone['id']}")
    stored = put_recipe(artifact_store)
    recipe = api.post("/v3/recipes", json={"name": "r", "recipe_type": "kiwi-ng", "linux_distribution": "sles15",
                                           "link": stored.link}).json()
    image = api.post("/v3/images", json={"name": "i", "metadata": {"a": "b"}}).json()
    api.post("/v3/remote-build-nodes", json={"xname": "x1000c0s0b0n0"})

    out = tmp_path / "out"
    result = ims(data_dir, "export", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    files = data.read_files(out)
    assert files["v2_public_keys.json"] == [key]
    assert files["v3_deleted_public_keys.json"] == api.get("/v3/deleted/public-keys").json()
    assert files["v2.2_recipes.json"] == [recipe]
    assert files["v2.1_images.json"] == [image]
    assert files["v2.0_remote_build_nodes.json"] == [{"xname": "x1000c0s0b0n0"}]
    assert ims(data_dir, "export", str(out)).returncode == 1  # no silent overwrite
    assert ims(data_dir, "export", "--force", str(out)).returncode == 0

    # What we export, we import again unchanged.
    copy_dir = tmp_path / "copy"
    assert ims(copy_dir, "import", str(out)).returncode == 0
    assert ims(copy_dir, "export", str(tmp_path / "again")).returncode == 0
    assert data.read_files(tmp_path / "again") == files


@pytest.mark.slow
def test_export_strict(tmp_path: Path, serve: Any) -> None:
    data_dir = tmp_path / "ims"
    api = serve(data_dir)
    api.post("/v3/recipes", json={"name": "deb", "recipe_type": "kiwi-ng", "linux_distribution": "debian12"})
    strict = ims(data_dir, "export", "--strict", str(tmp_path / "strict"))
    assert strict.returncode == 1 and "debian12" in strict.stderr
    assert not (tmp_path / "strict").exists()
    relaxed = ims(data_dir, "export", str(tmp_path / "relaxed"))
    assert relaxed.returncode == 0 and "would be refused by the original IMS" in relaxed.stderr


def _soft_delete_like_the_original(store: ArtifactStore, image_id: str) -> None:
    """Lay out S3 as the original's soft delete leaves it: everything under deleted/, plus deleted_manifest.json."""
    stored = put_image(store, image_id=image_id)
    entries: list[dict[str, Any]] = []
    for artifact in stored.manifest["artifacts"]:
        source = S3Location.parse(artifact["link"]["path"])
        etag = store.move(source, source.deleted())
        entries.append({"type": artifact["type"], "md5": artifact["md5"],
                        "link": {"etag": etag, "path": source.deleted().url, "type": "s3"}})
    manifest = S3Location(BOOT_BUCKET, stored.manifest_key)
    etag = store.move(manifest, manifest.deleted())
    entries.append({"type": MIME_MANIFEST, "link": {"etag": etag, "path": manifest.deleted().url, "type": "s3"}})
    store.put_json(S3Location(BOOT_BUCKET, f"deleted/{image_id}/deleted_manifest.json"),
                   build_manifest(entries, "2024-02-03 03:03:03"))


@pytest.mark.slow
def test_records_deleted_by_the_original_can_be_undeleted(
    tmp_path: Path, serve: Any, artifact_store: ArtifactStore
) -> None:
    _soft_delete_like_the_original(artifact_store, data.IMAGE_DELETED)
    recipe_key = f"recipes/{data.RECIPE_DELETED}/recipe.tar.gz"
    stored = put_recipe(artifact_store, recipe_id=data.RECIPE_DELETED)
    artifact_store.move(S3Location(RECIPE_BUCKET, recipe_key), S3Location(RECIPE_BUCKET, f"deleted/{recipe_key}"))
    # A deleted recipe whose link is not under deleted/ (its rename had failed): undelete keeps the link.
    unmoved = put_recipe(artifact_store)
    files = data.all_files()
    files["v3.2_deleted_recipes.json"].append(
        dict(data.deleted_recipes()[0], id=unmoved.recipe_id, link=unmoved.link, deleted="2024-02-04T00:00:00")
    )
    data_dir = tmp_path / "ims"
    assert ims(data_dir, "import", str(data.write_files(tmp_path / "in", files))).returncode == 0
    api = serve(data_dir)

    assert api.patch(f"/v3/deleted/images/{data.IMAGE_DELETED}", json={"operation": "undelete"}).status_code == 204
    image = api.get(f"/v3/images/{data.IMAGE_DELETED}").json()
    assert image["link"]["path"] == f"s3://boot-images/{data.IMAGE_DELETED}/manifest.json"
    keys = [f"{data.IMAGE_DELETED}/{name}" for name in ("rootfs", "kernel", "initrd", "manifest.json")]
    wait_for_objects(artifact_store, BOOT_BUCKET, present=keys,
                     absent=[f"deleted/{key}" for key in keys] + [f"deleted/{data.IMAGE_DELETED}/deleted_manifest.json"])

    # The collection undelete (the original answered 500 on the link outside deleted/).
    assert api.patch("/v3/deleted/recipes", json={"operation": "undelete"}).status_code == 204
    assert api.get(f"/v3/recipes/{data.RECIPE_DELETED}").json()["link"]["path"] == stored.link["path"]
    assert api.get(f"/v3/recipes/{unmoved.recipe_id}").json()["link"] == unmoved.link
    wait_for_objects(artifact_store, RECIPE_BUCKET, present=[recipe_key], absent=[f"deleted/{recipe_key}"])

"""The one-step workflows: import an external image, download it back, upload a recipe."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from tests.cli.conftest import Cli

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location, link_location

KIWI_CONFIG = '<?xml version="1.0"?>\n<image schemaversion="7.4" name="tiny"><description type="system"/></image>\n'


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, Path]:
    files = {
        "rootfs": os.urandom(3 * 1024 * 1024 + 17),
        "kernel": os.urandom(200_000),
        "initrd": os.urandom(100_001),
        "params": b"console=ttyS0 rd.shell\n",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"in-{name}"
        paths[name].write_bytes(data)
    return paths


def import_image(cli: Cli, name: str, files: dict[str, Path], *extra: str) -> dict:
    return cli.json(
        "images", "import", name, "--rootfs", str(files["rootfs"]), "--kernel", str(files["kernel"]),
        "--initrd", str(files["initrd"]), "--params", str(files["params"]), *extra,
    )


def test_import_then_download_is_byte_identical(
    cli: Cli, artifacts: dict[str, Path], artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    image = import_image(cli, "imported", artifacts, "--arch", "aarch64")
    assert image["arch"] == "aarch64"
    manifest_location = link_location(image["link"])
    assert manifest_location == S3Location("boot-images", f"{image['id']}/manifest.json")
    manifest = artifact_store.read_json(manifest_location)
    assert manifest["version"] == "1.0"
    by_type = {artifact["type"]: artifact for artifact in manifest["artifacts"]}
    assert by_type["application/vnd.cray.image.rootfs.squashfs"]["md5"] == md5(artifacts["rootfs"])
    assert by_type["application/vnd.cray.image.parameters.boot"]["md5"] == md5(artifacts["params"])
    rootfs_info = artifact_store.head(S3Location("boot-images", f"{image['id']}/rootfs"))
    assert rootfs_info is not None and rootfs_info.metadata["md5sum"] == md5(artifacts["rootfs"])

    dest = tmp_path / "out"
    rows = cli.json("images", "download", image["id"], str(dest))
    assert all(row["verified"] for row in rows) and len(rows) == 4
    for kind, source in (("rootfs", "rootfs"), ("kernel", "kernel"), ("initrd", "initrd"), ("boot_parameters", "params")):
        assert (dest / kind).read_bytes() == artifacts[source].read_bytes()
    assert (dest / "manifest.json").read_bytes() == artifact_store.read_bytes(manifest_location)
    assert sorted(p.name for p in dest.iterdir()) == ["boot_parameters", "initrd", "kernel", "manifest.json", "rootfs"]


def test_download_refuses_a_corrupted_artifact(
    cli: Cli, artifacts: dict[str, Path], artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    image = import_image(cli, "to-corrupt", artifacts)
    kernel = S3Location("boot-images", f"{image['id']}/kernel")
    artifact_store.put_bytes(kernel, b"not the kernel", metadata={})
    dest = tmp_path / "out"
    result = cli("images", "download", image["id"], str(dest))
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ims: md5 mismatch for s3://boot-images/") and "/kernel" in line
    assert not (dest / "kernel").exists() and not list(dest.glob(".*.part"))


def test_download_of_an_image_without_manifest_fails_cleanly(cli: Cli, tmp_path: Path) -> None:
    image = cli.json("images", "create", "--name", "no-manifest")
    result = cli("images", "download", image["id"], str(tmp_path / "out"))
    assert result.exit_code == 1 and "has no manifest link" in result.stderr


def test_import_of_a_missing_file_is_a_usage_error(cli: Cli, artifacts: dict[str, Path]) -> None:
    result = cli("images", "import", "x", "--rootfs", "/no/such/file", "--kernel", str(artifacts["kernel"]),
                 "--initrd", str(artifacts["initrd"]))
    assert result.exit_code == 2


def write_recipe(directory: Path, extra: str = "") -> Path:
    directory.mkdir(parents=True)
    (directory / "config.xml").write_text(KIWI_CONFIG)
    (directory / "config.sh").write_text("#!/bin/sh\necho configured" + extra + "\n")
    (directory / "root" / "etc").mkdir(parents=True)
    (directory / "root" / "etc" / "motd").write_text("built by IMS\n")
    return directory


def test_recipe_upload_from_a_directory_and_again(cli: Cli, artifact_store: ArtifactStore, tmp_path: Path) -> None:
    source = write_recipe(tmp_path / "recipe")
    name = f"recipe-{uuid.uuid4().hex[:8]}"
    recipe = cli.json("recipes", "upload", name, str(source), "--distro", "sles15", "--template", "CSM_RELEASE=1.6")
    location = S3Location("ims", f"recipes/{recipe['id']}/recipe.tar.gz")
    assert recipe["link"]["path"] == location.url and recipe["link"]["etag"]
    assert recipe["template_dictionary"] == [{"key": "CSM_RELEASE", "value": "1.6"}]
    info = artifact_store.head(location)
    assert info is not None and info.content_type == "application/x-compressed-tar"
    body = artifact_store.read_bytes(location)
    assert info.metadata["md5sum"] == hashlib.md5(body).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        names = set(archive.getnames())
        assert {"./config.xml", "./config.sh", "./root/etc/motd"} <= names
        assert all(member.uid == 0 and member.gid == 0 for member in archive.getmembers())

    again = cli.json("recipes", "upload", name, str(source), "--distro", "sles15", "--template", "CSM_RELEASE=1.6")
    assert again["id"] == recipe["id"]
    changed = cli.json("recipes", "upload", name, str(source), "--distro", "sles15", "--template", "CSM_RELEASE=1.7")
    assert changed["id"] != recipe["id"]


def test_recipe_upload_of_an_archive_finishes_an_unlinked_record(
    cli: Cli, artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    source = write_recipe(tmp_path / "recipe", extra=" twice")
    archive = tmp_path / "my_recipe.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=".")
    name = f"recipe-{uuid.uuid4().hex[:8]}"
    unlinked = cli.json("recipes", "create", "--name", name, "--linux-distribution", "sles15")
    recipe = cli.json("recipes", "upload", name, str(archive), "--distro", "sles15", "--arch", "aarch64")
    assert recipe["id"] == unlinked["id"]
    stored = artifact_store.read_bytes(link_location(recipe["link"]))
    assert stored == archive.read_bytes()


@pytest.mark.parametrize("kind", ["no-description", "not-gzip", "missing"])
def test_recipe_upload_rejects_bad_sources(cli: Cli, tmp_path: Path, kind: str) -> None:
    if kind == "no-description":
        source = tmp_path / "empty-dir"
        source.mkdir()
    elif kind == "not-gzip":
        source = tmp_path / "recipe.tar"
        source.write_bytes(b"plain text, not an archive")
    else:
        source = tmp_path / "nothing-here"
    name = f"bad-{uuid.uuid4().hex[:8]}"
    result = cli("recipes", "upload", name, str(source), "--distro", "sles15")
    # A source that cannot be a recipe is a usage error, found before anything is created or uploaded.
    assert result.exit_code == 2, result.stderr
    assert {"no-description": "has no config.xml", "not-gzip": "neither a recipe directory",
            "missing": "does not exist"}[kind] in " ".join(result.stderr.split())
    assert name not in json.dumps(cli.json("recipes", "list"))

"""upload_image_artifacts against a real `ims serve` and SeaweedFS: the ims-python-helper sequence."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from tests.support.images import build_image_root, md5_of, squash
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.client.artifacts import upload_image_artifacts
from ims.client.http import ImsApiError, ImsClient
from ims.domain.links import S3Location


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("upload-image")
    root = build_image_root(base / "root")
    return {
        "rootfs": squash(root, base / "rootfs.sqsh"),
        "kernel": root / "boot" / "vmlinuz-6.1.0-ims-test",
        "initrd": root / "boot" / "initrd",
        "boot_parameters": root / "boot" / "kernel-parameters",
    }


def test_upload_registers_an_image_with_a_manifest_matching_s3(
    fresh_ims_server: ImsServer, artifact_store: ArtifactStore, image_files: dict[str, Path]
) -> None:
    job_id = str(uuid.uuid4())
    with ImsClient(fresh_ims_server.url) as client:
        result = upload_image_artifacts(
            client,
            artifact_store,
            name="uploaded image",
            arch="aarch64",
            job_id=None,  # no job record to patch here; the stage tests cover resultant_image_id
            rootfs=image_files["rootfs"],
            kernel=image_files["kernel"],
            initrd=image_files["initrd"],
            kernel_parameters=image_files["boot_parameters"],
        )
        image_id = result.image["id"]
        stored = client.get_image(image_id)

    assert stored["name"] == "uploaded image" and stored["arch"] == "aarch64"
    manifest_location = S3Location("boot-images", f"{image_id}/manifest.json")
    assert stored["link"]["path"] == manifest_location.url
    assert stored["link"]["type"] == "s3"

    body = artifact_store.read_bytes(manifest_location)
    manifest = json.loads(body)
    assert manifest == result.manifest
    assert body.decode() == json.dumps(manifest, sort_keys=True, indent=4)
    manifest_head = artifact_store.head(manifest_location)
    assert manifest_head is not None
    assert manifest_head.content_type == "application/json"
    assert manifest_head.metadata == {"md5sum": hashlib.md5(body).hexdigest()}
    assert stored["link"]["etag"] == manifest_head.etag
    assert manifest["version"] == "1.0"

    kinds = {
        "application/vnd.cray.image.rootfs.squashfs": "rootfs",
        "application/vnd.cray.image.kernel": "kernel",
        "application/vnd.cray.image.initrd": "initrd",
        "application/vnd.cray.image.parameters.boot": "boot_parameters",
    }
    assert [artifact["type"] for artifact in manifest["artifacts"]] == list(kinds)
    for artifact in manifest["artifacts"]:
        kind = kinds[artifact["type"]]
        location = S3Location.parse(artifact["link"]["path"])
        assert location == S3Location("boot-images", f"{image_id}/{kind}")
        head = artifact_store.head(location)
        assert head is not None
        local_md5 = md5_of(image_files[kind])
        assert artifact["md5"] == local_md5
        assert artifact["link"]["etag"] == head.etag
        assert head.metadata == {
            "md5sum": local_md5,
            "x-shasta-ims-image-name": "uploaded image",
            "x-shasta-ims-image-id": image_id,
        }
        assert head.size == image_files[kind].stat().st_size
    del job_id


def _names(client: ImsClient, resource: str) -> list[str]:
    return [record["name"] for record in client.request("GET", client.path(resource))]


def test_an_s3_refusal_removes_the_image_record(
    fresh_ims_server: ImsServer, s3_config: S3Config, image_files: dict[str, Path]
) -> None:
    refusing = ArtifactStore(replace(s3_config, secret_key="wrong-secret"))
    with ImsClient(fresh_ims_server.url) as client:
        with pytest.raises(ClientError):
            upload_image_artifacts(
                client,
                refusing,
                name="refused",
                arch="x86_64",
                job_id=None,
                rootfs=image_files["rootfs"],
                kernel=image_files["kernel"],
                initrd=image_files["initrd"],
            )
        assert "refused" not in _names(client, "/images")
        assert "refused" not in _names(client, "/deleted/images")


def test_a_failed_artifact_removes_the_uploaded_objects_too(
    fresh_ims_server: ImsServer, artifact_store: ArtifactStore, image_files: dict[str, Path]
) -> None:
    with ImsClient(fresh_ims_server.url) as client:
        with pytest.raises(OSError):
            upload_image_artifacts(
                client,
                artifact_store,
                name="half uploaded",
                arch="x86_64",
                job_id=None,
                rootfs=image_files["rootfs"],
                kernel=image_files["kernel"],
                initrd=image_files["initrd"],
                # A regular file by stat whose read fails with EIO, while the other artifacts go up.
                debug_kernel=Path("/proc/self/mem"),
            )
        assert "half uploaded" not in _names(client, "/images")
    leftovers = [
        key
        for key in artifact_store.list_keys("boot-images")
        if artifact_store.head(S3Location("boot-images", key)).metadata.get("x-shasta-ims-image-name")  # type: ignore[union-attr]
        == "half uploaded"
    ]
    assert leftovers == []


def test_api_errors_carry_status_and_problem_detail(fresh_ims_server: ImsServer) -> None:
    with ImsClient(fresh_ims_server.url) as client:
        with pytest.raises(ImsApiError) as missing:
            client.get_image(str(uuid.uuid4()))
        assert missing.value.status == 404
        assert missing.value.detail == "Requested resource does not exist. Re-run request with valid ID."
        with pytest.raises(ImsApiError) as invalid:
            client.create_image("x", "sparc")
        assert invalid.value.status == 422
        assert invalid.value.errors == {"arch": ["Must be one of: aarch64, x86_64."]}


def test_unreachable_ims_is_retried_then_reported() -> None:
    from ims.client.http import RetryPolicy
    from ims.embedded.ports import free_port

    client = ImsClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=3, backoff=0.01))
    with pytest.raises(ImsApiError) as failure:
        client.get_job("x")
    assert failure.value.status == 0
    assert "cannot reach IMS" in str(failure.value)

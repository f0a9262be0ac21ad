"""A customize job from POST /v3/jobs to the new image: IMS, the local runner, the stages, sshd, SeaweedFS."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.jobs.kit import processes_of
from tests.stages.kit import KeyPair, ssh
from tests.support.images import RegisteredImage, md5_of, read_from_squashfs
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed"),
]


def _wait_job(api: httpx.Client, job_id: str, until: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/v3/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} stayed {job.get('status')}")


def _ssh_port(job: dict[str, Any]) -> int:
    info = job["ssh_containers"][0]["connection_info"]
    return int(info["customer_access"]["port"])


@pytest.mark.parametrize("jail", [True, False])
def test_customize_job_produces_a_new_image_with_the_change(
    fresh_ims_server: ImsServer,
    registered_image: RegisteredImage,
    artifact_store: ArtifactStore,
    user_key: KeyPair,
    work_root: Path,
    jail: bool,
) -> None:
    with httpx.Client(base_url=fresh_ims_server.url, timeout=30) as api:
        base = api.post("/v3/images", json={"name": "base", "link": registered_image.manifest_link, "arch": "x86_64"})
        assert base.status_code == 201, base.text
        key = api.post("/v3/public-keys", json={"name": "user", "public_key": user_key.public})
        assert key.status_code == 201, key.text
        created = api.post(
            "/v3/jobs",
            json={
                "job_type": "customize",
                "artifact_id": base.json()["id"],
                "public_key_id": key.json()["id"],
                "image_root_archive_name": f"customized-{jail}",
                "ssh_containers": [{"name": "customize", "jail": jail}],
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        job = _wait_job(api, job_id, {"waiting_on_user", "error"})
        assert job["status"] == "waiting_on_user", job
        # No S3 endpoint or key in any process of the job (issue 8): its artifacts move through presigned URLs.
        for pid in processes_of(job_id):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            assert not [
                item for item in environ if item.startswith((b"S3_ENDPOINT=", b"S3_ACCESS_KEY=", b"S3_SECRET_KEY="))
            ]
        port = _ssh_port(job)
        if jail:
            change = "echo customized > /etc/motd && touch /tmp/complete"
        else:
            change = 'echo customized > "$IMAGE_ROOT_PARENT/image-root/etc/motd" && touch "$IMAGE_ROOT_PARENT/complete"'
        done = ssh(user_key, port, change)
        assert done.returncode == 0, done.stderr

        job = _wait_job(api, job_id, {"success", "error"})
        assert job["status"] == "success", job
        image = api.get(f"/v3/images/{job['resultant_image_id']}").json()

    assert image["name"] == f"customized-{jail}"
    manifest = artifact_store.read_json(S3Location.parse(image["link"]["path"]))
    assert len(manifest["artifacts"]) == 4
    for artifact in manifest["artifacts"]:
        location = S3Location.parse(artifact["link"]["path"])
        head = artifact_store.head(location)
        assert head is not None and head.etag == artifact["link"]["etag"]
        assert head.metadata["md5sum"] == artifact["md5"]
        assert head.metadata["x-shasta-ims-job-id"] == job_id
        assert head.metadata["x-shasta-ims-image-id"] == image["id"]
        local = work_root / f"{job_id}-{location.key.rsplit('/', 1)[-1]}"
        artifact_store.download_file(location, local)
        assert md5_of(local) == artifact["md5"]
    archive = work_root / f"{job_id}-rootfs"
    assert read_from_squashfs(archive, "etc/motd", work_root) == b"customized\n"
    assert read_from_squashfs(archive, "etc/os-release", work_root).count(b'VERSION_ID="base"') == 1
    listing = json.dumps(manifest)
    for kind in ("kernel", "initrd", "parameters.boot"):
        assert f"application/vnd.cray.image.{kind}" in listing

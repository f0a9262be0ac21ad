"""A real customize job under IMS_AUTH=oidc: anonymous callers get nothing, so everything the job does (report its
status, create its image, upload through presigned URLs, link the image, set its result) must go through its own
token. The admin only POSTs the job and ends the SSH session."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import add_image, add_public_key, post_customize, ssh_signal, start_job_server, wait_status
from tests.stages.kit import make_keypair
from tests.support.images import build_image_root, md5_of, read_from_squashfs, register_in_s3, squash
from tests.support.jwks import LocalIssuer

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="jobs run as root")]


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    local.add_key("RS256")
    yield local
    local.stop()


def test_a_customize_job_needs_nothing_but_its_token(
    work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore, issuer: LocalIssuer, tmp_path: Path
) -> None:
    key = next(iter(issuer.keys.values()))
    admin = {"Authorization": f"Bearer {issuer.token(key, roles=['admin'], expires_in=3600)}"}
    server = start_job_server(
        work_root, s3_env, IMS_AUTH="oidc", IMS_OIDC_ISSUER=issuer.issuer, IMS_OIDC_AUDIENCE=issuer.audience
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=admin) as api:
            base = work_root / f"oidc-e2e-{uuid.uuid4().hex[:6]}"
            root = build_image_root(base / "root", marker="base")
            image = register_in_s3(artifact_store, root, squash(root, base / "image.sqsh"))
            keypair = make_keypair(base / "keys", "user")
            job = post_customize(api, add_image(api, image), add_public_key(api, keypair), jail=True)
            waiting = wait_status(api, job["id"], {"waiting_on_user"}, timeout=180)
            ssh_signal(api, keypair, waiting, "echo oidc-change > /etc/motd && touch /tmp/complete")
            done = wait_status(api, job["id"], {"success"}, timeout=180)

            result = api.get(f"/v3/images/{done['resultant_image_id']}").json()
            manifest = artifact_store.read_json(S3Location.parse(result["link"]["path"]))
            rootfs = next(item for item in manifest["artifacts"] if "rootfs" in item["type"])
            location = S3Location.parse(rootfs["link"]["path"])
            info = artifact_store.head(location)
            assert info is not None and info.metadata["md5sum"] == rootfs["md5"]
            archive = tmp_path / "result.sqsh"
            artifact_store.download_file(location, archive)
            assert md5_of(archive) == rootfs["md5"]
            assert read_from_squashfs(archive, "etc/motd", tmp_path).strip() == b"oidc-change"
            # Every write of the job was its own, under its token; none was anonymous.
            log = server.log()
            assert f"audit who=job:{job['id']} method=POST path=/v3/images" in log
            assert f"audit who=job:{job['id']} method=PATCH path=/v3/jobs/{job['id']}" in log
            assert "who=anonymous" not in log and "status=401" not in log and "status=403" not in log
            # Once the job's process is gone, its linked result stays (only unlinked leftovers are removed).
            job_dir = Path(server.env.get("IMS_JOBS_DIR") or server.data_dir / "jobs") / job["id"] / "image"
            deadline = time.monotonic() + 30
            while job_dir.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert api.get(f"/v3/images/{result['id']}").json()["link"] == result["link"]
            assert artifact_store.head(location) is not None
    finally:
        with httpx.Client(base_url=server.url, timeout=30, headers=admin) as api:
            api.delete("/v3/jobs")
        server.stop()

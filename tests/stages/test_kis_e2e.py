"""A kis recipe as kiwi's documentation writes it — no `archive="false"` — built end to end by a create job.

The shipped `debian-bookworm` recipe with the `archive` attribute taken out: kiwi then packs its kernel,
initrd and squashfs into a tar.xz and its kiwi.result.json names only that archive. The job must still
publish kiwi's three artifacts. One real kiwi build (about 4 minutes on 2 CPUs with a warm package cache).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import add_public_key, delete_all_jobs, logs, start_job_server, wait_status
from tests.jobs.test_create_e2e import (
    BUILD_TIMEOUT,
    RECIPES,
    _check_manifest,
    _status_timings,
    _upload,
    initrd_members,
)
from tests.stages.kit import make_keypair
from tests.support.images import list_squashfs

from ims.artifacts.s3 import ArtifactStore
from ims.client.http import ImsClient
from ims.client.resources import Ims


@pytest.mark.slow
def test_kis_recipe_without_archive_false_is_packaged(
    work_root: Path, s3_env: dict[str, str], artifact_store: ArtifactStore, tmp_path: Path
) -> None:
    recipe = tmp_path / "debian-bookworm-kis-default"
    shutil.copytree(RECIPES / "debian-bookworm", recipe)
    config = recipe / "config.xml"
    text = config.read_text()
    assert 'archive="false"' in text
    config.write_text(text.replace('archive="false"', ""))

    server = start_job_server(work_root, s3_env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api, Ims(ImsClient(server.url)) as client:
            recipe_id = _upload(client, artifact_store, recipe)
            key_id = add_public_key(api, make_keypair(tmp_path / "keys", "kis"))
            start = time.monotonic()
            response = api.post(
                "/v3/jobs",
                json={
                    "job_type": "create",
                    "artifact_id": recipe_id,
                    "public_key_id": key_id,
                    "image_root_archive_name": f"kis-default-{uuid.uuid4().hex[:6]}",
                },
            )
            assert response.status_code == 201, response.text
            job = response.json()
            done = wait_status(api, job["id"], {"success", "error"}, timeout=BUILD_TIMEOUT)
            log = logs(api, job["id"])
            print(f"TIMING kis without archive=false: POST to {done['status']} {time.monotonic() - start:.1f} s")
            print(f"TIMING kis without archive=false: {_status_timings(api, job['id'])}")
            waited = [line for line in log.splitlines() if "kiwi" in line and "wait" in line.lower()]
            print("TIMING kis without archive=false: " + (waited[0] if waited else "no wait for another kiwi build"))
            assert done["status"] == "success", (done["status_reason"], log[-4000:])
            assert "kis artifacts beside kiwi's archive" in log or "out of kiwi's archive" in log
            assert "\r" not in log  # kiwi's progress bars: final states only
            image = api.get(f"/v3/images/{done['resultant_image_id']}").json()
            files = _check_manifest(artifact_store, image, tmp_path)
            assert set(files) == {"rootfs", "kernel", "initrd"}
            assert files["kernel"].read_bytes()[0x202:0x206] == b"HdrS"
            assert any("lib/modules/" in name for name in initrd_members(files["initrd"]))
            assert files["rootfs"].read_bytes()[:4] == b"hsqs"
            listing = "\n".join(list_squashfs(files["rootfs"]))
            assert "/usr/lib/systemd/systemd" in listing
            assert "/image/config.xml" not in listing  # kiwi squashes without its own files
    finally:
        delete_all_jobs(server)
        server.stop()

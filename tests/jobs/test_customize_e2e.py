"""Customize jobs end to end, as root: POST -> the LocalRunner's stages -> real sshd -> new image in S3."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.jobs.kit import (
    add_image,
    add_public_key,
    jobs_dir,
    logs,
    post_customize,
    processes_of,
    ssh_job,
    ssh_ok,
    ssh_signal,
    stage_pid,
    wait_gone,
    wait_status,
)
from tests.stages.kit import KeyPair, LocalImage, wait_for
from tests.support.images import RegisteredImage, md5_of, read_from_squashfs, register_in_s3
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

pytestmark = pytest.mark.slow

TIMINGS: dict[str, list[float]] = {}


def _timed(name: str, seconds: float) -> None:
    TIMINGS.setdefault(name, []).append(seconds)
    print(f"TIMING {name}: {seconds:.2f} s")


def _check_new_image(
    api: httpx.Client, store: ArtifactStore, record: dict[str, Any], scratch: Path, member: str
) -> bytes:
    """The job's image: record, manifest md5s/etags against S3, and the file `member` from its rootfs."""
    image_id = record["resultant_image_id"]
    assert image_id, record
    image = api.get(f"/v3/images/{image_id}").json()
    assert image["name"] == record["image_root_archive_name"]
    assert image["arch"] == "x86_64"
    manifest = store.read_json(S3Location.parse(image["link"]["path"]))
    assert manifest["version"] == "1.0"
    rootfs_path: Path | None = None
    for artifact in manifest["artifacts"]:
        location = S3Location.parse(artifact["link"]["path"])
        head = store.head(location)
        assert head is not None, location
        assert artifact["link"]["etag"] == head.etag
        assert artifact["md5"] == head.metadata["md5sum"]
        if artifact["type"].startswith("application/vnd.cray.image.rootfs.squashfs"):
            rootfs_path = scratch / "rootfs.sqsh"
            store.download_file(location, rootfs_path)
            assert md5_of(rootfs_path) == artifact["md5"]
    assert rootfs_path is not None
    return read_from_squashfs(rootfs_path, member, scratch)


def assert_no_s3_credentials(job_id: str) -> None:
    """Issue 8: no S3 endpoint or key in any process of the job; the stage holds only its own token."""
    pids = processes_of(job_id)
    assert stage_pid(job_id) in pids
    for pid in pids:
        try:
            names = {item.split(b"=", 1)[0] for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")}
        except OSError:
            continue  # ended meanwhile
        assert not names & {b"S3_ENDPOINT", b"S3_ACCESS_KEY", b"S3_SECRET_KEY", b"IMS_API_TOKEN"}, (pid, names)
    stage_env = Path(f"/proc/{stage_pid(job_id)}/environ").read_bytes().split(b"\0")
    assert any(item.startswith(b"IMS_JOB_TOKEN=imsjob_") for item in stage_env)


@pytest.mark.parametrize("jail", [False, True], ids=["full-shell", "jailed"])
def test_customize_changes_the_image(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    artifact_store: ArtifactStore,
    stored_image: RegisteredImage,
    job_key: KeyPair,
    key_id: str,
    tmp_path: Path,
    jail: bool,
) -> None:
    image_id = add_image(jobs_api, stored_image)
    start = time.monotonic()
    job = post_customize(jobs_api, image_id, key_id, jail=jail)
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"})
    _timed("post_to_waiting_on_user", time.monotonic() - start)
    assert_no_s3_credentials(job["id"])

    if jail:
        # The user's `/` is the image root; the flag lives in its /tmp.
        seen = ssh_signal(
            jobs_api, job_key, waiting, "echo jailed-change > /etc/motd && cat /etc/os-release && touch /tmp/complete"
        )
        assert 'VERSION_ID="base"' in seen
    else:
        ssh_signal(
            jobs_api,
            job_key,
            waiting,
            'echo host-shell-change > "$IMAGE_ROOT_PARENT/image-root/etc/motd" && touch "$IMAGE_ROOT_PARENT/complete"',
        )
    signalled = time.monotonic()
    done = wait_status(jobs_api, job["id"], {"success"})
    _timed("complete_to_success", time.monotonic() - signalled)

    motd = _check_new_image(jobs_api, artifact_store, done, tmp_path, "etc/motd")
    assert motd == (b"jailed-change\n" if jail else b"host-shell-change\n")
    assert done["status_reason"] is None
    # The work directory is gone once the job ended; the log stays and tells the story.
    job_dir = jobs_dir(job_server) / job["id"]
    deadline = time.monotonic() + 10
    while (job_dir / "image").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (job_dir / "image").exists()
    text = logs(jobs_api, job["id"])
    assert "waiting_on_user" in text and "success" in text


def test_failed_signal_ends_in_error_without_an_image(
    jobs_api: httpx.Client, stored_image: RegisteredImage, job_key: KeyPair, key_id: str
) -> None:
    job = post_customize(jobs_api, add_image(jobs_api, stored_image), key_id, jail=True)
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"})
    images_before = {image["id"] for image in jobs_api.get("/v3/images").json()}
    ssh_signal(jobs_api, job_key, waiting, "touch /tmp/failed")
    ended = wait_status(jobs_api, job["id"], {"error"})
    assert ended["resultant_image_id"] is None
    assert "failed" in (ended["status_reason"] or "")
    assert {image["id"] for image in jobs_api.get("/v3/images").json()} == images_before


def test_keys_open_only_their_own_job(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    artifact_store: ArtifactStore,
    base_image: LocalImage,
    job_key: KeyPair,
    second_key: KeyPair,
    key_id: str,
) -> None:
    first = post_customize(
        jobs_api,
        add_image(jobs_api, register_in_s3(artifact_store, base_image.root, base_image.archive)),
        key_id,
        jail=True,
    )
    second_key_id = add_public_key(jobs_api, second_key)
    second = post_customize(
        jobs_api,
        add_image(jobs_api, register_in_s3(artifact_store, base_image.root, base_image.archive)),
        second_key_id,
        jail=True,
    )
    first = wait_status(jobs_api, first["id"], {"waiting_on_user"})
    second = wait_status(jobs_api, second["id"], {"waiting_on_user"})
    ssh_ok(jobs_api, job_key, first, "touch /tmp/first-was-here")

    # The second job's key is refused by the first job's sshd, and the first key by the second's.
    refused = ssh_job(second_key, first, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert ssh_job(job_key, second, "true").returncode == 255
    # Inside its own jail the second job sees its own image root only.
    looked = ssh_job(second_key, second, "ls /tmp; echo IMS_JOB_ID=$IMS_JOB_ID")
    assert looked.returncode == 0, looked.stderr
    assert "first-was-here" not in looked.stdout
    assert f"IMS_JOB_ID={second['id']}" in looked.stdout
    for job in (first, second):
        assert jobs_api.delete(f"/v3/jobs/{job['id']}").status_code == 204


def test_a_wrong_key_cannot_log_in(
    jobs_api: httpx.Client, stored_image: RegisteredImage, second_key: KeyPair, key_id: str
) -> None:
    job = post_customize(jobs_api, add_image(jobs_api, stored_image), key_id, jail=False)
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"})
    refused = ssh_job(second_key, waiting, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert jobs_api.delete(f"/v3/jobs/{job['id']}").status_code == 204


def test_deleting_a_waiting_job_stops_sshd_and_removes_its_directory(
    job_server: ImsServer, jobs_api: httpx.Client, stored_image: RegisteredImage, job_key: KeyPair, key_id: str
) -> None:
    job = post_customize(jobs_api, add_image(jobs_api, stored_image), key_id, jail=True)
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"})
    ssh_ok(jobs_api, job_key, waiting, "true")
    job_dir = jobs_dir(job_server) / job["id"]
    assert (job_dir / "image" / "image-root").is_dir()

    assert jobs_api.delete(f"/v3/jobs/{job['id']}").status_code == 204
    assert jobs_api.get(f"/v3/jobs/{job['id']}").status_code == 404
    wait_gone(jobs_api, job["id"], job_dir, timeout=20)
    wait_for(lambda: not processes_of(job["id"]), 20, "the job's processes to end")
    assert ssh_job(job_key, waiting, "true").returncode == 255  # nothing answers on the port any more


def test_killing_the_stage_marks_the_job_error(
    job_server: ImsServer, jobs_api: httpx.Client, stored_image: RegisteredImage, key_id: str
) -> None:
    job = post_customize(jobs_api, add_image(jobs_api, stored_image), key_id, jail=True)
    wait_status(jobs_api, job["id"], {"waiting_on_user"})
    os.kill(stage_pid(job["id"]), signal.SIGKILL)
    killed = time.monotonic()
    ended = wait_status(jobs_api, job["id"], {"error"}, timeout=float(job_server.env["IMS_JOB_HEARTBEAT_TIMEOUT"]))
    _timed("stage_killed_to_error", time.monotonic() - killed)
    assert "killed by SIGKILL" in ended["status_reason"]
    assert "waiting_on_user" in ended["status_reason"]
    wait_for(lambda: not processes_of(job["id"]), 20, "sshd to go with the stage")
    image_dir = jobs_dir(job_server) / job["id"] / "image"
    wait_for(lambda: not image_dir.exists(), 20, "the work directory to be removed")
    assert "killed by SIGKILL" in logs(jobs_api, job["id"])


def test_secrets_stay_out_of_records_and_logs(
    job_server: ImsServer, jobs_api: httpx.Client, stored_image: RegisteredImage, job_key: KeyPair, key_id: str
) -> None:
    job = post_customize(jobs_api, add_image(jobs_api, stored_image), key_id, jail=True)
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"})
    ssh_signal(jobs_api, job_key, waiting, "touch /tmp/failed")
    wait_status(jobs_api, job["id"], {"error"})
    secret = job_server.env["S3_SECRET_KEY"]
    seen = [jobs_api.get(f"/v3/jobs/{job['id']}").text, jobs_api.get("/v3/jobs").text, logs(jobs_api, job["id"])]
    seen += [path.read_bytes().decode("latin-1") for path in job_server.data_dir.glob("ims.sqlite3*")]
    seen.append(job_server.log())
    for text in seen:
        assert secret not in text
        assert "X-Amz-Signature" not in text and "X-Amz-Credential" not in text

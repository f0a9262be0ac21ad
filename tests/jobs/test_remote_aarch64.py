"""aarch64 by emulation: a job for an aarch64 image with no aarch64 node runs on this x86_64 host, and the
user's jailed session runs the image's own arm64 binaries through qemu-user-static (binfmt_misc).

The image is a small real Debian arm64 root (tests/support/arm64root.py), built once and cached.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import add_image, post_customize, ssh_ok, ssh_signal, wait_status
from tests.stages.kit import KeyPair, LocalImage
from tests.support.arm64root import arm64_image, emulation_problem
from tests.support.images import md5_of, read_from_squashfs, register_in_s3

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="jobs need root"),
    pytest.mark.skipif(os.uname().machine == "aarch64", reason="the host runs aarch64 natively"),
]

ELF_MACHINE_AARCH64 = 0xB7


@pytest.fixture(scope="module")
def arm64(work_root: Path) -> LocalImage:
    problem = emulation_problem()
    if problem:
        pytest.skip(f"no aarch64 emulation: {problem}")
    return arm64_image(work_root / "arm64-image")


def _rootfs_member(api: httpx.Client, store: ArtifactStore, image_id: str, member: str, scratch: Path) -> bytes:
    image = api.get(f"/v3/images/{image_id}").json()
    assert image["arch"] == "aarch64"
    manifest = store.read_json(S3Location.parse(image["link"]["path"]))
    for artifact in manifest["artifacts"]:
        if artifact["type"].startswith("application/vnd.cray.image.rootfs.squashfs"):
            rootfs = scratch / "rootfs.sqsh"
            store.download_file(S3Location.parse(artifact["link"]["path"]), rootfs)
            assert md5_of(rootfs) == artifact["md5"]
            return read_from_squashfs(rootfs, member, scratch)
    raise AssertionError(manifest)


def test_emulated_aarch64_customize(
    jobs_api: httpx.Client,
    artifact_store: ArtifactStore,
    arm64: LocalImage,
    job_key: KeyPair,
    key_id: str,
    tmp_path: Path,
) -> None:
    image_id = add_image(jobs_api, register_in_s3(artifact_store, arm64.root, arm64.archive), arch="aarch64")
    start = time.monotonic()
    job = post_customize(jobs_api, image_id, key_id, jail=True)
    assert job["arch"] == "aarch64" and job["remote_build_node"] == ""  # no aarch64 node: this host
    waiting = wait_status(jobs_api, job["id"], {"waiting_on_user"}, timeout=180)
    to_waiting = time.monotonic() - start
    # The session's shell and tools are the image's arm64 binaries, run through qemu.
    seen = ssh_ok(jobs_api, job_key, waiting, "uname -m; cat /etc/ims-test-marker; dpkg --print-architecture")
    assert seen.split() == ["aarch64", "arm64-base", "arm64"], seen
    ssh_signal(
        jobs_api,
        job_key,
        waiting,
        "echo changed-under-emulation > /etc/motd && cp /bin/true /usr/local/bin/arm-true && touch /tmp/complete",
    )
    signalled = time.monotonic()
    done = wait_status(jobs_api, job["id"], {"success"}, timeout=300)
    to_success = time.monotonic() - signalled
    member = _rootfs_member(jobs_api, artifact_store, done["resultant_image_id"], "etc/motd", tmp_path)
    assert member == b"changed-under-emulation\n"
    binary = _rootfs_member(jobs_api, artifact_store, done["resultant_image_id"], "usr/local/bin/arm-true", tmp_path)
    assert binary[:4] == b"\x7fELF" and int.from_bytes(binary[18:20], "little") == ELF_MACHINE_AARCH64
    print(
        f"TIMING aarch64_customize (emulated): POST->waiting_on_user {to_waiting:.2f} s, "
        f"complete->success {to_success:.2f} s; image {arm64.archive.stat().st_size / 1e6:.0f} MB squashed"
    )

"""`python -m ims.stages customize` as a process: the way the job runner starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stages.kit import KeyPair, base_env, ssh, wait_for
from tests.support.images import RegisteredImage

from ims.artifacts.s3 import ArtifactStore, S3Config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed"),
]


def _launch(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = dict(os.environ)
    full.update(env)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ims.stages", "customize"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _customize_env(
    job_dir: Path, image: RegisteredImage, store: ArtifactStore, s3: S3Config, key: KeyPair, port: int
) -> dict[str, str]:
    return base_env(
        job_dir,
        s3,
        DOWNLOAD_URL=store.presign_get(image.rootfs, expires=600),
        DOWNLOAD_MD5SUM=image.rootfs_md5,
        IMS_PUBLIC_KEY=key.public,
        IMS_SSH_PORT=str(port),
        SSH_JAIL="True",
    )


def test_failed_verdict_ends_the_job_in_error_without_upload(
    job_dir: Path,
    registered_image: RegisteredImage,
    artifact_store: ArtifactStore,
    s3_config: S3Config,
    user_key: KeyPair,
    ssh_port: int,
) -> None:
    log = job_dir.parent / f"{job_dir.name}.log"
    process = _launch(_customize_env(job_dir, registered_image, artifact_store, s3_config, user_key, ssh_port), log)
    try:
        wait_for(lambda: "waiting_on_user" in log.read_text() or process.poll() is not None, 60, "waiting_on_user")
        assert ssh(user_key, ssh_port, "touch /tmp/failed").returncode == 0
        assert process.wait(30) == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    for line in ("job status -> fetching_image", "unsquashfs", "job status -> waiting_on_user"):
        assert line in text
    assert "job status -> error (sshenv: the user marked the customization as failed" in text
    assert "packaging_artifacts" not in text
    assert not list(job_dir.glob("*.sqsh"))


def test_sigterm_stops_sshd_and_restores_the_image(
    job_dir: Path,
    registered_image: RegisteredImage,
    artifact_store: ArtifactStore,
    s3_config: S3Config,
    user_key: KeyPair,
    ssh_port: int,
) -> None:
    log = job_dir.parent / f"{job_dir.name}.log"
    process = _launch(_customize_env(job_dir, registered_image, artifact_store, s3_config, user_key, ssh_port), log)
    try:
        wait_for(lambda: "waiting_on_user" in log.read_text() or process.poll() is not None, 60, "waiting_on_user")
        assert ssh(user_key, ssh_port, "true").returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "job status -> error (sshenv: the job was stopped)" in log.read_text()
    assert ssh(user_key, ssh_port, "true", timeout=10).returncode == 255
    resolv = job_dir / "image-root" / "etc" / "resolv.conf"
    assert os.readlink(resolv) == "../run/systemd/resolve/stub-resolv.conf"

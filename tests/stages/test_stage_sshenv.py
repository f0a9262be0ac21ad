"""sshenv: a real OpenSSH sshd per job, jailed or not, ended by the user's complete/failed flag."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from tests.stages.kit import Background, KeyPair, LocalImage, base_env, reporter_for, ssh, unpack, wait_for

from ims.stages.environment import JobEnvironment
from ims.stages.reporting import StageError
from ims.stages.signals import Verdict
from ims.stages.slirp import host_resolv_conf, slirp4netns_path
from ims.stages.sshenv import sshenv

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed")


def _start(
    job_dir: Path, image: LocalImage, key: KeyPair, port: int, jail: bool, **extra: str
) -> tuple[Background, object]:
    unpack(image.archive, job_dir / "image-root")
    env = JobEnvironment.from_env(
        base_env(job_dir, IMS_PUBLIC_KEY=key.public, IMS_SSH_PORT=str(port), SSH_JAIL=str(jail), **extra)
    )
    reporter, log = reporter_for(env)
    stage = Background(lambda: sshenv(env, reporter))
    wait_for(lambda: "job status -> waiting_on_user" in log.text() or not stage.thread.is_alive(), what="sshd")
    if not stage.thread.is_alive():
        stage.join()
    return stage, log


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_jailed_session_lands_in_the_image_and_completes(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, other_key: KeyPair, ssh_port: int
) -> None:
    stage, log = _start(job_dir, test_image, user_key, ssh_port, jail=True)

    seen = ssh(user_key, ssh_port, "cat /etc/os-release; echo JOB=$IMS_JOB_ID ARCH=$IMS_ARCH; ls /")
    assert seen.returncode == 0, seen.stderr
    assert "ID=imstest" in seen.stdout and 'VERSION_ID="base"' in seen.stdout
    assert "JOB=" in seen.stdout and "ARCH=x86_64" in seen.stdout
    assert "image-root" not in seen.stdout  # `/` is the image itself

    # Working DNS inside while the session lasts: slirp4netns's forwarder in its own network (the default
    # where slirp4netns is installed), else the host's resolv.conf.
    resolv = ssh(user_key, ssh_port, "cat /etc/resolv.conf")
    assert resolv.returncode == 0
    if slirp4netns_path() is not None:
        assert resolv.stdout == host_resolv_conf()
        assert resolv.stdout.startswith("nameserver 10.0.2.3\n")
    else:
        assert resolv.stdout == Path("/etc/resolv.conf").read_text()

    denied = ssh(other_key, ssh_port, "true")
    assert denied.returncode == 255
    assert "Permission denied" in denied.stderr

    change = ssh(user_key, ssh_port, "echo customized > /etc/motd && touch /tmp/complete")
    assert change.returncode == 0, change.stderr

    assert stage.join() is Verdict.COMPLETE
    root = job_dir / "image-root"
    assert (root / "etc" / "motd").read_text() == "customized\n"
    assert not (root / "tmp" / "complete").exists()  # never packaged into the image
    assert os.readlink(root / "etc" / "resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert not _port_open(ssh_port)
    assert "sshd answers on 127.0.0.1" in log.text()  # type: ignore[attr-defined]


def test_full_shell_sees_the_work_area_at_mnt_image_and_uses_parent_flags(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    stage, _ = _start(job_dir, test_image, user_key, ssh_port, jail=False)

    seen = ssh(
        user_key,
        ssh_port,
        "echo PARENT=$IMAGE_ROOT_PARENT; cat /mnt/image/image-root/etc/os-release; echo JOB=$IMS_JOB_ID; "
        f"cat /etc/os-release; ls {job_dir} || echo NO-HOST-PATH",
    )
    assert seen.returncode == 0, seen.stderr
    assert "PARENT=/mnt/image" in seen.stdout
    assert "ID=imstest" in seen.stdout
    assert "JOB=" in seen.stdout
    assert Path("/etc/os-release").read_text() in seen.stdout  # the read-only toolbox, not the image
    assert "NO-HOST-PATH" in seen.stdout  # the host's path of the work area is not there

    # A flag at the jail location means nothing without a jail.
    assert ssh(user_key, ssh_port, "touch /mnt/image/image-root/tmp/complete").returncode == 0
    assert ssh(user_key, ssh_port, "touch /mnt/image/failed").returncode == 0
    assert stage.join() is Verdict.FAILED
    assert not (job_dir / "failed").exists()
    assert not _port_open(ssh_port)


def test_stopping_the_environment_drops_open_sessions(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    import subprocess
    import time

    stage, _ = _start(job_dir, test_image, user_key, ssh_port, jail=True)
    lingering = subprocess.Popen(
        [
            "ssh",
            "-i",
            str(user_key.private),
            "-p",
            str(ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            "sleep 300",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        assert lingering.poll() is None
        (job_dir / "complete").touch()  # the operator's flag works in jailed mode too
        assert stage.join() is Verdict.COMPLETE
        lingering.wait(15)  # the session ends with sshd's namespace
    finally:
        if lingering.poll() is None:
            lingering.kill()
            lingering.wait()


def test_a_bad_public_key_is_refused_before_sshd_starts(job_dir: Path, test_image: LocalImage, ssh_port: int) -> None:
    unpack(test_image.archive, job_dir / "image-root")
    env = JobEnvironment.from_env(base_env(job_dir, IMS_PUBLIC_KEY="not a key", IMS_SSH_PORT=str(ssh_port)))
    reporter, _ = reporter_for(env)
    with pytest.raises(StageError, match="not a valid OpenSSH public key"):
        sshenv(env, reporter)
    assert not _port_open(ssh_port)


def test_sftp_writes_into_the_jail(job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int) -> None:
    import subprocess

    stage, _ = _start(job_dir, test_image, user_key, ssh_port, jail=True)
    source = job_dir / "payload.txt"
    source.write_text("copied by scp\n")
    copy = subprocess.run(
        [
            "scp",
            "-i",
            str(user_key.private),
            "-P",
            str(ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            str(source),
            "root@127.0.0.1:/root/payload.txt",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert copy.returncode == 0, copy.stderr
    assert ssh(user_key, ssh_port, "touch /tmp/complete").returncode == 0
    assert stage.join() is Verdict.COMPLETE
    assert (job_dir / "image-root" / "root" / "payload.txt").read_text() == "copied by scp\n"
    shutil.rmtree(job_dir / "image-root")


def test_dkms_mounts_exist_only_for_the_session(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    stage, _ = _start(job_dir, test_image, user_key, ssh_port, jail=True, JOB_ENABLE_DKMS="True")
    inside = ssh(user_key, ssh_port, "echo DKMS=$IMS_DKMS_ENABLED; ls /proc/self/; ls /sys; ls /dev/null")
    assert inside.returncode == 0, inside.stderr
    assert "DKMS=True" in inside.stdout and "status" in inside.stdout and "kernel" in inside.stdout
    assert list((job_dir / "image-root" / "proc").iterdir()) == []  # never visible to the packager
    assert ssh(user_key, ssh_port, "touch /tmp/complete").returncode == 0
    assert stage.join() is Verdict.COMPLETE
    assert list((job_dir / "image-root" / "sys").iterdir()) == []


def test_a_root_owned_job_tree_is_jailed_without_a_bind_mount(
    test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    import tempfile

    tree = Path(tempfile.mkdtemp(prefix="ims-stage-test-", dir="/run"))
    try:
        tree.chmod(0o755)
        job_dir = tree / "job"
        job_dir.mkdir(mode=0o755)
        stage, log = _start(job_dir, test_image, user_key, ssh_port, jail=True)
        seen = ssh(user_key, ssh_port, "cat /etc/os-release && touch /tmp/complete")
        assert seen.returncode == 0, seen.stderr
        assert "ID=imstest" in seen.stdout
        assert stage.join() is Verdict.COMPLETE
        assert f"jailed in {job_dir}/image-root" in log.text()  # type: ignore[attr-defined]
    finally:
        shutil.rmtree(tree)


def test_the_grace_waits_for_connected_sessions_only(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    import time

    # A session still connected after `complete` finishes its work within the grace ...
    stage, _ = _start(job_dir, test_image, user_key, ssh_port, jail=True, IMS_SSH_GRACE_SECONDS="10")
    late = ssh(user_key, ssh_port, "touch /tmp/complete; sleep 1.5; echo late > /etc/late-write")
    assert late.returncode == 0, late.stderr
    assert stage.join() is Verdict.COMPLETE
    assert (job_dir / "image-root" / "etc" / "late-write").read_text() == "late\n"

    # ... and with every client gone the verdict comes at once, not after the grace.
    shutil.rmtree(job_dir / "image-root")
    stage, _ = _start(job_dir, test_image, user_key, ssh_port, jail=True, IMS_SSH_GRACE_SECONDS="10")
    done = ssh(user_key, ssh_port, "touch /tmp/complete")
    assert done.returncode == 0, done.stderr
    start = time.monotonic()
    assert stage.join() is Verdict.COMPLETE
    assert time.monotonic() - start < 5.0

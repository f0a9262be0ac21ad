"""The bubblewrap sandbox itself: what a process inside holds and what it cannot do (real bwrap, as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stages.kit import (
    Background,
    KeyPair,
    LocalImage,
    LogBuffer,
    base_env,
    reporter_for,
    ssh,
    unpack,
    wait_for,
)

from ims.stages.build import last_error_line
from ims.stages.environment import JobEnvironment
from ims.stages.reporting import StageError, run_stage
from ims.stages.sandbox import OCI_DEFAULT_CAPS, Sandbox, SandboxError, clean_env, launch, run
from ims.stages.signals import Verdict
from ims.stages.sshenv import sshenv

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0, reason="needs bwrap, as root")

OCI_MASK = 0xA80425FB  # the 14 OCI default capabilities
BUSYBOX = "/bin/busybox"


def _toolbox(ro: dict[Path, str] | None = None, rw: dict[Path, str] | None = None) -> Sandbox:
    box = Sandbox(env=clean_env()).host_system().proc().dev().remount_ro("/dev").tmpfs("/tmp")
    for source, target in (ro or {}).items():
        box.ro_bind(source, target)
    for source, target in (rw or {}).items():
        box.bind(source, target)
    return box.remount_ro("/")


def _status(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _failing_bwrap(directory: Path) -> Path:
    """A bwrap that fails as a broken install would (say, user namespaces switched off)."""
    directory.mkdir(parents=True, exist_ok=True)
    fake = directory / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    return directory


def test_argv_is_a_list_with_every_namespace_and_the_oci_caps() -> None:
    argv = _toolbox().argv(["sh", "-c", "echo $HOME; rm -rf /"], info_fd=5, block_fd=6)
    assert argv[0] == "bwrap" and argv[-3:] == ["sh", "-c", "echo $HOME; rm -rf /"]  # no shell around it
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session",
                 "--die-with-parent"):  # fmt: skip
        assert flag in argv
    assert "--unshare-net" not in argv and "--share-net" not in argv  # the host network stays
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    added = [argv[i + 1] for i, item in enumerate(argv) if item == "--cap-add"]
    assert added == [f"CAP_{cap}" for cap in OCI_DEFAULT_CAPS] and len(added) == 14


def test_inside_holds_the_14_caps_and_no_host_secrets() -> None:
    done = run(
        _toolbox(), ["sh", "-c", "cat /proc/self/status; env; ls /etc; echo PIDS $(ls /proc | grep -E '^[0-9]+$')"]
    )
    assert done.returncode == 0, done.stderr
    status = _status(done.stdout)
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[name], 16) == OCI_MASK, (name, status[name])
    assert status["NoNewPrivs"].strip() == "1"  # a setuid or file-capability binary cannot raise them
    assert "shadow" not in done.stdout.split() and "ssh_host_ed25519_key" not in done.stdout
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line and line[0].isupper())
    assert set(env) <= {"PATH", "LANG", "HOME", "PWD", "SHLVL", "_"}, env
    pids = next(line for line in done.stdout.splitlines() if line.startswith("PIDS")).split()[1:]
    assert len(pids) <= 6, pids  # bwrap's init, sh and its pipeline: its own PID namespace


def test_a_file_capability_binary_gains_nothing(tmp_path: Path) -> None:
    if shutil.which("setcap") is None:
        pytest.skip("setcap (libcap2-bin) is not installed")
    tool = tmp_path / "grep-caps"
    shutil.copy2("/usr/bin/grep", tool)
    subprocess.run(["setcap", "cap_sys_admin,cap_sys_module,cap_net_admin+eip", str(tool)], check=True)
    os.chmod(tool, 0o4755)  # setuid root as well
    box = _toolbox(ro={tmp_path: "/opt/probe"})
    done = run(box, ["/opt/probe/grep-caps", "-E", "^Cap(Eff|Prm|Bnd)", "/proc/self/status"])
    assert done.returncode == 0, done.stderr
    assert all(int(value, 16) == OCI_MASK for value in _status(done.stdout).values()), done.stdout


@pytest.mark.parametrize(
    "command",
    [
        "mount -t tmpfs none /tmp",
        "mount -t proc proc /tmp",
        "mknod /tmp/disk b 254 0 && head -c 1 /tmp/disk",
        "mknod /dev/disk b 254 0",
        "echo x > /usr/x",
        "echo x > /etc/passwd",
        "/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'",
        "cat /etc/shadow",
        "ls /var/lib",
    ],
    ids=[
        "mount-tmpfs",
        "mount-proc",
        "mknod-tmp",
        "mknod-dev",
        "write-usr",
        "write-etc",
        "raw-socket",
        "shadow",
        "host-var",
    ],  # fmt: skip
)
def test_what_root_inside_cannot_do(command: str) -> None:
    done = run(_toolbox(), ["sh", "-c", command])
    assert done.returncode != 0, (command, done.stdout, done.stderr)


def test_files_made_for_the_sandbox_are_world_readable_and_read_only() -> None:
    # A process that drops root (apt's _apt download methods) must still read the resolv.conf it is given.
    box = Sandbox(env=clean_env()).host_system().proc().dev().file("/etc/ims-test.conf", "nameserver 10.0.2.3\n")
    done = run(
        box,
        [
            "sh",
            "-c",
            "stat -c %a /etc/ims-test.conf && setpriv --reuid 65534 --regid 65534 "
            "--clear-groups cat /etc/ims-test.conf && echo x >> /etc/ims-test.conf",
        ],
    )
    assert done.stdout.splitlines()[:2] == ["644", "nameserver 10.0.2.3"], (done.stdout, done.stderr)
    assert done.returncode != 0  # and nobody writes it


def test_files_written_inside_keep_their_real_owners(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    done = run(_toolbox(rw={work: "/mnt/work"}), ["sh", "-c", "touch /mnt/work/f && chown 42:4242 /mnt/work/f"])
    assert done.returncode == 0, done.stderr
    info = (work / "f").stat()
    assert (info.st_uid, info.st_gid) == (42, 4242)  # the identity map: ids inside are the host's


def test_bwrap_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="bwrap.*not installed"):
        launch(_toolbox(), ["true"])


def test_a_failing_bwrap_ends_the_ssh_stage_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    job_dir: Path,
    test_image: LocalImage,
    user_key: KeyPair,
    ssh_port: int,
) -> None:
    monkeypatch.setenv("PATH", f"{_failing_bwrap(tmp_path / 'bin')}:{os.environ['PATH']}")
    unpack(test_image.archive, job_dir / "image-root")
    env = JobEnvironment.from_env(base_env(job_dir, IMS_PUBLIC_KEY=user_key.public, IMS_SSH_PORT=str(ssh_port)))
    reporter, log = reporter_for(env)
    with pytest.raises(StageError, match="sandbox could not start.*No permissions to create new namespace"):
        sshenv(env, reporter)

    def stage() -> None:
        sshenv(env, reporter)

    assert run_stage("sshenv", reporter, stage) != 0
    assert "job status -> error" in log.text() and "No permissions to create new namespace" in log.text()


def test_a_failing_bwrap_gives_kiwi_builds_a_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", f"{_failing_bwrap(tmp_path / 'bin')}:{os.environ['PATH']}")
    target = tmp_path / "job"
    target.mkdir()
    log = target / "kiwi.log"
    done = subprocess.run(
        [sys.executable, "-m", "ims.stages.kiwi_sandbox", "--", "kiwi-ng", "--logfile", str(log), "system", "build",
         "--description", str(target / "recipe"), "--target-dir", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "No permissions to create new namespace" in done.stderr
    assert "kiwi's sandbox" in last_error_line(log)


def _session(job_dir: Path, image: LocalImage, key: KeyPair, port: int, jail: bool) -> tuple[Background, LogBuffer]:
    unpack(image.archive, job_dir / "image-root")
    env = JobEnvironment.from_env(
        base_env(job_dir, IMS_PUBLIC_KEY=key.public, IMS_SSH_PORT=str(port), SSH_JAIL=str(jail))
    )
    reporter, log = reporter_for(env)
    stage = Background(lambda: sshenv(env, reporter))
    wait_for(lambda: "waiting_on_user" in log.text() or not stage.thread.is_alive(), what="sshd")
    return stage, log


def test_an_unjailed_session_cannot_replace_what_the_stage_uses_afterwards(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    (job_dir / "image.sqsh").write_bytes(b"input")
    stage, _ = _session(job_dir, test_image, user_key, ssh_port, jail=False)
    # The image root is a mount point in the sandbox: it cannot be moved aside and replaced by a link to `/`.
    moved = ssh(user_key, ssh_port, f"{BUSYBOX} mv /mnt/image/image-root /mnt/image/aside")
    assert moved.returncode != 0, moved.stdout
    for command in ("echo x > /mnt/image/image.sqsh", "rm /mnt/image/image.sqsh", "rm -rf /mnt/image/sshd"):
        assert ssh(user_key, ssh_port, command).returncode != 0, command
    # What the session may create in /mnt/image stays in its own directory, never in the work area itself.
    made = ssh(user_key, ssh_port, f"{BUSYBOX} ln -s / /mnt/image/customized-image.sqsh; ls /mnt/image")
    assert made.returncode == 0 and "image-root" in made.stdout, made.stderr
    assert not os.path.lexists(job_dir / "customized-image.sqsh")
    assert ssh(user_key, ssh_port, "echo edited > /mnt/image/image-root/etc/motd").returncode == 0
    assert ssh(user_key, ssh_port, "touch /mnt/image/complete").returncode in (0, 255)
    assert stage.join() is Verdict.COMPLETE
    assert (job_dir / "image-root").is_dir() and not (job_dir / "image-root").is_symlink()
    assert (job_dir / "image-root" / "etc" / "motd").read_text() == "edited\n"
    assert (job_dir / "image.sqsh").read_bytes() == b"input"


def test_a_jail_whose_etc_became_a_link_keeps_the_hosts_resolv_conf_safe(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int
) -> None:
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    stage, log = _session(job_dir, test_image, user_key, ssh_port, jail=True)
    swapped = ssh(
        user_key, ssh_port, f"{BUSYBOX} mv /etc /etc.real && {BUSYBOX} ln -s /etc /etc && touch /tmp/complete"
    )
    assert swapped.returncode in (0, 255), swapped.stderr
    assert stage.join() is Verdict.COMPLETE
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv  # never written through the link
    assert "resolv.conf was left as it is" in log.text()


def test_a_build_that_leaves_a_link_out_of_the_job_dir_is_refused(tmp_path: Path) -> None:
    """Recipe code swaps the build root for a link to `/` (the stage would package the host): refused."""
    target = tmp_path / "job"
    (target / "build" / "image-root").mkdir(parents=True)
    log = target / "kiwi.log"
    script = f"mv {target}/build/image-root {target}/build/aside && ln -s / {target}/build/image-root"
    done = subprocess.run(
        [sys.executable, "-m", "ims.stages.kiwi_sandbox", "--", "sh", "-c", script, "kiwi-ng",
         "--logfile", str(log), "--target-dir", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 126, done.stderr
    assert "links out of the job's directory" in last_error_line(log)
    assert str(target / "build" / "image-root") in last_error_line(log)


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system's python3")
def test_kiwi_from_a_virtualenv_runs_when_the_stage_uses_another_interpreter(tmp_path: Path) -> None:
    # A build node: the stage runs with the system's python3 while kiwi-ng lives in a virtualenv (IMS's own
    # here), possibly made from an interpreter outside /usr (pyenv): the sandbox must show kiwi all of it.
    kiwi = Path(sys.executable).parent / "kiwi-ng"
    src = Path(__file__).resolve().parents[2] / "src"
    done = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "ims.stages.kiwi_sandbox",
            "--",
            str(kiwi),
            "system",
            "build",
            "--target-dir",
            str(tmp_path),
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(src)},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Usage: kiwi-ng system build" in done.stdout

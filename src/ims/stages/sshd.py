"""One OpenSSH sshd per job: its configuration, keys and process.

sshd runs as PID 1 of its own PID and mount namespace (`unshare --pid --mount --fork --kill-child`).
Ending that process ends every SSH session with it, as the original's container exit did, and mounts
made for the jail stay invisible to the host.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ims.stages.environment import JobEnvironment
from ims.stages.reporting import StageError

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
# A root-owned 0755 mount point: the jail is bind-mounted here, inside sshd's private mount namespace,
# when the image root's own path would fail ChrootDirectory's ownership rule.
JAIL_MOUNT_POINT = Path("/run/ims-jail")
_FORBIDDEN_IN_CONFIG = set(' \t\n\r"%#\\')
# In the new namespace: bind the jail (when asked), make the DKMS mounts (pairs of fstype and target),
# then become sshd. Arguments are positional, so no value is ever parsed as shell text.
_LAUNCH = (
    "set -e; src=$1 target=$2 sshd=$3 conf=$4 log=$5; shift 5; "
    'if [ -n "$src" ]; then mount --bind "$src" "$target"; fi; '
    'while [ $# -ge 2 ]; do mount -t "$1" "$1" "$2" || echo "ims: could not mount $1 on $2" >&2; shift 2; done; '
    'exec "$sshd" -D -f "$conf" -E "$log"'
)
# What the original mounts into the image root for DKMS builds; gone with sshd's mount namespace.
DKMS_MOUNTS = (("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev"))


def _config_path(path: Path) -> str:
    text = str(path)
    if not path.is_absolute() or set(text) & _FORBIDDEN_IN_CONFIG:
        raise StageError(f"path {text!r} cannot be used in sshd_config")
    return text


def chroot_safe(path: Path) -> bool:
    """ChrootDirectory's rule: every component root-owned and not writable by group or others."""
    current = Path(os.path.realpath(path))
    for component in [current, *current.parents]:
        info = os.stat(component)
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


@dataclass
class SshdFiles:
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def host_keys(self) -> list[Path]:
        return [self.directory / "ssh_host_ed25519_key", self.directory / "ssh_host_ecdsa_key"]


def write_keys(files: SshdFiles, public_key: str) -> None:
    if not public_key:
        raise StageError("the job has no public key (IMS_PUBLIC_KEY)")
    files.directory.mkdir(parents=True, exist_ok=True)
    os.chown(files.directory, 0, 0)
    files.directory.chmod(0o700)
    files.authorized_keys.write_text(public_key.strip() + "\n")
    files.authorized_keys.chmod(0o600)
    check = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(files.authorized_keys)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise StageError("the job's public key is not a valid OpenSSH public key")
    for key, kind in zip(files.host_keys(), ("ed25519", "ecdsa"), strict=True):
        for old in (key, key.with_name(key.name + ".pub")):
            old.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(key)], check=True, capture_output=True)


def render_config(env: JobEnvironment, files: SshdFiles, chroot: Path | None) -> str:
    variables = [
        ("IMS_JOB_ID", env.job_id),
        ("IMS_ARCH", env.build_arch),
        ("IMS_DKMS_ENABLED", str(env.dkms_enabled)),
        ("REMOTE_BUILD_NODE", env.remote_build_node),
    ]
    if chroot is None:
        # A full shell is not at the original's fixed /mnt/image: tell the user where the image is.
        variables.append(("IMAGE_ROOT_PARENT", _config_path(env.image_root_parent)))
    set_env = " ".join(f"{name}={value}" for name, value in variables)
    lines = [
        f"Port {env.ssh_port}",
        f"ListenAddress {env.ssh_listen}",
        *(f"HostKey {_config_path(key)}" for key in files.host_keys()),
        "PidFile none",
        # Read by sshd before any chroot, so an absolute path outside the image works in both modes.
        f"AuthorizedKeysFile {_config_path(files.authorized_keys)}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # Our key file is root-owned 0600 in a 0700 directory; StrictModes would only reject job
        # directories that sit under a world-writable tree such as /tmp.
        "StrictModes no",
        "AllowUsers root",
        "PrintMotd no",
        "X11Forwarding no",
        "LogLevel VERBOSE",
        "Subsystem sftp internal-sftp",
        f"SetEnv {set_env}",
    ]
    if chroot is not None:
        lines += ["Match User root", f"    ChrootDirectory {_config_path(chroot)}"]
    return "\n".join(lines) + "\n"


class SshServer:
    def __init__(
        self,
        env: JobEnvironment,
        files: SshdFiles,
        bind_source: Path | None,
        chroot: Path | None,
        mounts: list[tuple[str, Path]] | None = None,
    ):
        self.env = env
        self.files = files
        self.bind_source = bind_source
        self.chroot = chroot
        self.mounts = mounts or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.bind_source is not None:
            JAIL_MOUNT_POINT.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.files.config.write_text(render_config(self.env, self.files, self.chroot))
        self.files.config.chmod(0o600)
        test = subprocess.run([SSHD, "-t", "-f", str(self.files.config)], capture_output=True, text=True)
        if test.returncode != 0:
            raise StageError(f"sshd rejected its configuration: {test.stderr.strip()[-500:]}")
        argv = [
            # If the stage process dies, its sshd must not outlive it and keep a root shell open.
            "setpriv",
            "--pdeathsig",
            "TERM",
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _LAUNCH,
            "ims-sshd",
            str(self.bind_source or ""),
            str(JAIL_MOUNT_POINT),
            SSHD,
            str(self.files.config),
            str(self.files.log),
            *(str(item) for fstype, target in self.mounts for item in (fstype, target)),
        ]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.files.log.open("ab"),
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until sshd sends its banner; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.running():
                raise StageError(f"sshd exited at start: {self.log_tail()}")
            if _banner(self.env.ssh_listen, self.env.ssh_port):
                return time.monotonic() - start
            time.sleep(0.05)
        raise StageError(f"sshd did not answer on {self.env.ssh_listen}:{self.env.ssh_port} in {timeout:g} s")

    def stop(self, grace: float = 5.0) -> None:
        """End sshd and every session; returns only once they are all gone."""
        if self.process is None or self.process.poll() is not None:
            return
        # Signal the namespace's PID 1 (sshd) rather than `unshare`: when PID 1 exits the kernel kills
        # the rest of the namespace, and `unshare` returns only after that, so the port is free on return.
        init = _first_child(self.process.pid)
        try:
            if init is not None:
                os.kill(init, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)
            self.process.wait(grace)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            self.process.kill()
            self.process.wait(grace)

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.files.log.read_text(errors="replace")
        except OSError:
            return ""
        return "; ".join(text.strip().splitlines()[-lines:])


def dkms_mounts(image_root: Path, seen_as: Path) -> list[tuple[str, Path]]:
    """Mount targets for DKMS: only real directories of the image, never a symlink that `mount` would follow."""
    mounts = []
    for fstype, name in DKMS_MOUNTS:
        directory = image_root / name
        if directory.is_dir() and not directory.is_symlink():
            mounts.append((fstype, seen_as / name))
    return mounts


def _first_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False

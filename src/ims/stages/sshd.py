"""One OpenSSH sshd per job: its configuration, keys and its bubblewrap sandbox.

sshd runs inside the job's sandbox (see ims.stages.sandbox), so every session it starts is confined
there too:
- jailed: the image root is bound at `/mnt/image/image-root` in a read-only toolbox root (the host's
  /usr and a few /etc files) and sshd's `ChrootDirectory` puts each session there, so the user's `/`
  is the image; with DKMS the image root also gets the sandbox's own /proc, the host's /sys read-only
  and a minimal /dev;
- unjailed: the toolbox is the session's `/`, with the job's work area at `/mnt/image`, as in the
  original's container.
sshd's own files (config, host keys, authorized_keys) are bound read-only at `/run/ims-sshd`; no other
job's directory exists in the sandbox. Stopping the sandbox ends sshd and every session at once.

Network: `isolated` (IMS_JOB_NETWORK, see ims.stages.slirp) gives the sandbox its own network namespace
wired out by slirp4netns, without the host's loopback; sshd listens on 0.0.0.0:port in there and
slirp4netns forwards IMS_SSH_LISTEN:port on the host to it. `host` shares the host's network.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ims.stages.environment import JobEnvironment
from ims.stages.reporting import StageError
from ims.stages.sandbox import Sandbox, SandboxError, SandboxProcess, children, clean_env, launch
from ims.stages.slirp import SlirpError, SlirpNetwork, host_resolv_conf

SSHD = "/usr/sbin/sshd"
# Where things are seen inside the sandbox.
WORK_AREA = Path("/mnt/image")  # the original's IMAGE_ROOT_PARENT
JAIL = WORK_AREA / "image-root"
SSHD_FILES = Path("/run/ims-sshd")
SSHD_LOG = Path("/run/ims-sshd.log")
SESSION_DIR = ".session"
_FORBIDDEN_IN_CONFIG = set(' \t\n\r"%#\\')
# What the original mounts into the image root for DKMS builds.
DKMS_DIRS = ("proc", "sys", "dev")


def _config_path(path: Path) -> str:
    text = str(path)
    if not path.is_absolute() or set(text) & _FORBIDDEN_IN_CONFIG:
        raise StageError(f"path {text!r} cannot be used in sshd_config")
    return text


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

    def inside(self, path: Path) -> Path:
        """The path of one of these files as sshd sees it in the sandbox."""
        return SSHD_FILES / path.relative_to(self.directory)


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


def render_config(env: JobEnvironment, files: SshdFiles, jailed: bool, *, isolated: bool = False) -> str:
    """sshd_config with the paths sshd sees inside its sandbox (and, isolated, the address it has there)."""
    variables = [
        ("IMS_JOB_ID", env.job_id),
        ("IMS_ARCH", env.build_arch),
        ("IMS_DKMS_ENABLED", str(env.dkms_enabled)),
        ("REMOTE_BUILD_NODE", env.remote_build_node),
    ]
    if not jailed:
        # As in the original's container: the work area is /mnt/image.
        variables.append(("IMAGE_ROOT_PARENT", str(WORK_AREA)))
    set_env = " ".join(f"{name}={value}" for name, value in variables)
    lines = [
        f"Port {env.ssh_port}",
        # Isolated: the sandbox's own namespace, reached through slirp4netns's forward of ssh_listen:port.
        f"ListenAddress {'0.0.0.0' if isolated else env.ssh_listen}",
        *(f"HostKey {_config_path(files.inside(key))}" for key in files.host_keys()),
        "PidFile none",
        f"AuthorizedKeysFile {_config_path(files.inside(files.authorized_keys))}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The key file is bound read-only; StrictModes would only look at its host-side modes.
        "StrictModes no",
        "AllowUsers root",
        "PrintMotd no",
        "X11Forwarding no",
        "LogLevel VERBOSE",
        "Subsystem sftp internal-sftp",
        f"SetEnv {set_env}",
    ]
    if jailed:
        lines += ["Match User root", f"    ChrootDirectory {JAIL}"]
    return "\n".join(lines) + "\n"


def dkms_dirs(image_root: Path) -> list[str]:
    """Mount targets for DKMS: only real directories of the image, never a symlink a mount would follow."""
    return [name for name in DKMS_DIRS if (image_root / name).is_dir() and not (image_root / name).is_symlink()]


def session_dir(work_area: Path) -> Path:
    """The host directory an unjailed session sees as /mnt/image (its signal files land there)."""
    return work_area / SESSION_DIR


def _fresh_session_dir(work_area: Path) -> Path:
    path = session_dir(work_area)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o755)
    return path


def session_sandbox(
    work_area: Path,
    files: SshdFiles,
    root: Path,
    *,
    jailed: bool,
    dkms: bool = False,
    job_id: str = "",
    isolated: bool = False,
) -> Sandbox:
    """The sandbox sshd and its sessions live in; `root` is the tree the session works on.

    Jailed: `root` is bound at /mnt/image/image-root and sshd chroots sessions into it. Unjailed: the
    toolbox is the session's `/`, and /mnt/image shows the job's work area (`work_area`, the job's
    IMAGE_ROOT_PARENT) as the original's container does: `root` read-write at its place, every other
    entry read-only, and the directory itself is the writable `.session` directory where `complete` and
    `failed` land. So nothing the stage uses after the session (the image root's path, the output
    archive) can be replaced by a link from inside.

    `isolated`: a network namespace of its own (slirp4netns joins it once it runs), and a resolv.conf
    that names slirp4netns's DNS forwarder instead of the host's.
    """
    # IMS_JOB_ID only (the session gets it through SetEnv anyway): operators find the job's processes by it.
    box = Sandbox(env=clean_env({"IMS_JOB_ID": job_id} if job_id else None))
    box.unshare_net = isolated
    box.host_system(resolv_conf=host_resolv_conf() if isolated else None)
    box.proc().dev().remount_ro("/dev")
    box.tmpfs("/tmp").tmpfs("/var/tmp").tmpfs("/run").dir("/run/sshd")
    box.ro_bind(files.directory, SSHD_FILES)
    files.log.touch(mode=0o600)
    box.bind(files.log, SSHD_LOG)  # sshd's log: the only file of its own that it writes
    if jailed:
        box.bind(root, JAIL)
        if dkms:
            for name in dkms_dirs(root):
                target = f"{JAIL}/{name}"
                if name == "proc":
                    box.proc(target)
                elif name == "sys":
                    box.ro_bind("/sys", target)
                else:
                    box.dev(target).remount_ro(target)
    else:
        box.tmpfs("/root")
        box.bind(_fresh_session_dir(work_area), WORK_AREA)
        relative = root.relative_to(work_area)
        top = work_area / relative.parts[0]
        for entry in sorted(work_area.iterdir()):
            if entry.name == SESSION_DIR or entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                continue
            if entry == root:
                box.bind(entry, WORK_AREA / entry.name)
            else:
                # Read-only, sshd's own files included: the session cannot rewrite its authorized_keys.
                box.ro_bind(entry, WORK_AREA / entry.name)
                if entry == top:
                    box.bind(root, WORK_AREA / relative)
    return box.remount_ro("/")


@dataclass
class SshServer:
    env: JobEnvironment
    files: SshdFiles
    root: Path  # the tree the session works on
    jailed: bool
    dkms: bool = False
    isolated: bool = False  # its own network namespace, wired out by slirp4netns
    sandbox: SandboxProcess | None = field(default=None, init=False)
    network: SlirpNetwork | None = field(default=None, init=False)

    def start(self) -> None:
        self.files.config.write_text(render_config(self.env, self.files, self.jailed, isolated=self.isolated))
        self.files.config.chmod(0o600)
        box = session_sandbox(
            self.env.image_root_parent,
            self.files,
            self.root,
            jailed=self.jailed,
            dkms=self.dkms,
            job_id=self.env.job_id,
            isolated=self.isolated,
        )
        # -E, not -e: with -e a session's own sshd process would log onto the user's channel.
        command = [SSHD, "-D", "-E", str(SSHD_LOG), "-f", str(self.files.inside(self.files.config))]
        with self.files.log.open("ab") as log:
            try:
                self.sandbox = launch(box, command, stdout=subprocess.DEVNULL, stderr=log)
            except SandboxError as exc:
                raise StageError(f"the SSH sandbox could not start: {exc}: {self.log_tail(3)}") from exc
            if self.isolated:
                try:
                    # Only once bwrap has set up the namespace's loopback: slirp4netns configures it too.
                    self.sandbox.wait_setup()
                    self.network = SlirpNetwork.attach(self.sandbox.init_pid, log=log.fileno())
                    self.network.forward_tcp(self.env.ssh_listen, self.env.ssh_port, self.env.ssh_port)
                except (SlirpError, SandboxError, OSError) as exc:
                    self.stop()
                    raise StageError(f"the SSH sandbox's network could not start: {exc}: {self.log_tail(3)}") from exc

    def running(self) -> bool:
        if self.network is not None and not self.network.running():
            return False
        return self.sandbox is not None and self.sandbox.running()

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until sshd sends its banner; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.running():
                raise StageError(f"sshd exited at start: {self.log_tail()}")
            if _banner(self.env.ssh_listen, self.env.ssh_port):
                return time.monotonic() - start
            time.sleep(0.02)
        raise StageError(f"sshd did not answer on {self.env.ssh_listen}:{self.env.ssh_port} in {timeout:g} s")

    def sessions_open(self) -> bool:
        """Whether a client is still connected: sshd (the sandbox init's child) has a process per connection."""
        if self.sandbox is None or not self.sandbox.running():
            return False
        return any(children(sshd) for sshd in children(self.sandbox.init_pid))

    def wait_sessions_closed(self, timeout: float) -> float:
        """Wait until no client is connected, `timeout` at most; return the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout and self.sessions_open():
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self, grace: float = 10.0) -> None:
        """End sshd and every session; returns only once they are all gone (the port is free)."""
        try:
            if self.sandbox is not None:
                self.sandbox.stop(grace)
        finally:
            if self.network is not None:  # slirp4netns ends with the sandbox (and holds the forwarded port)
                self.network.stop()

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.files.log.read_text(errors="replace")
        except OSError:
            return ""
        return "; ".join(text.strip().splitlines()[-lines:])


def _banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False

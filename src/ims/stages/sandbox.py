"""Bubblewrap sandboxes for everything a job's user can reach or that runs recipe or package code.

A `Sandbox` is a description: what its root holds, which capabilities it keeps, its environment.
`Sandbox.argv` turns it into a `bwrap` argv (a list, never shell text); `launch` starts it.

Every sandbox has:
- its own mount namespace whose root (a tmpfs made by bwrap, mounted nodev,nosuid) holds only the
  listed mounts; every bind is nodev,nosuid as bwrap makes them, and `/dev` is bwrap's minimal one
  (null, zero, full, random, urandom, tty, a private devpts and a tmpfs /dev/shm);
- its own PID namespace with its own `/proc`, its own IPC and UTS namespaces, a new session
  (`setsid`: no TIOCSTI into a terminal outside) and `--die-with-parent` (it ends with its job);
- the host's network, or with `unshare_net` a network namespace of its own (the session sandbox with
  IMS_JOB_NETWORK=isolated: its own loopback, wired to the outside by slirp4netns, see ims.stages.slirp);
- its own **user namespace with the identity mapping** (uid/gid 0..2^32-2 inside are the same ids
  outside; bwrap's `--userns-block-fd` lets us write the full map before it goes on). Files written
  inside keep their real owners, yet every capability the sandbox holds is a capability *in that user
  namespace*: it acts on what the sandbox's own namespaces hold and on files bound into it, never on
  the host (no device nodes, no mounting the host's block devices, no raw sockets on the shared host
  network: sniffing loopback traffic, where jobs' tokens travel, is refused);
- the OCI runtimes' default capability set (`OCI_DEFAULT_CAPS`) as effective, permitted, inheritable,
  ambient and bounding set, plus only what a description adds (kiwi's CAP_SYS_ADMIN, see build.py).
  bwrap also sets no_new_privs, so a setuid or file-capability binary cannot raise them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BWRAP = "bwrap"
# The container default set of the OCI runtimes (runc, crun; Docker's and containerd's defaults).
OCI_DEFAULT_CAPS = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
)
# uid/gid map lines: every id but the invalid (uid_t)-1 maps to itself.
IDENTITY_MAP = "0 0 4294967295\n"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host files a toolbox's /etc gets, read-only: name service, DNS, TLS trust, dynamic linker, shells.
# Never the whole /etc: it holds /etc/shadow, the host's SSH host keys and service configurations.
TOOLBOX_ETC = (
    "passwd",
    "group",
    "host.conf",
    "hosts",
    "resolv.conf",
    "gai.conf",
    "services",
    "protocols",
    "networks",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "profile",
    "profile.d",
    "bash.bashrc",
    "environment",
    "shells",
    "inputrc",
    "terminfo",
    "mime.types",
    "magic",
    "vim",
    "ssh/ssh_config",
    "ssh/ssh_config.d",
    "ssh/moduli",
    "login.defs",
    "debconf.conf",
    "dpkg",
    "python3",
    "python3.11",
    "wgetrc",
    "xattr.conf",
    "mke2fs.conf",
)
NSSWITCH = (
    "passwd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files dns\nnetworks: files\n"
    "protocols: files\nservices: files\nethers: files\nrpc: files\n"
)
_MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxError(Exception):
    """The sandbox could not be started."""


@dataclass
class Sandbox:
    """A sandbox description; add mounts in order (a later mount may sit on an earlier one)."""

    env: dict[str, str] = field(default_factory=dict)
    caps: tuple[str, ...] = OCI_DEFAULT_CAPS
    chdir: str = "/"
    ops: list[tuple[str, ...]] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (target, content), read-only
    unshare_net: bool = False  # a network namespace of its own (only its loopback until slirp4netns joins)

    # --- mounts
    def ro_bind(self, source: Path | str, target: Path | str | None = None, *, optional: bool = False) -> Sandbox:
        self.ops.append(("--ro-bind-try" if optional else "--ro-bind", str(source), str(target or source)))
        return self

    def bind(self, source: Path | str, target: Path | str | None = None) -> Sandbox:
        self.ops.append(("--bind", str(source), str(target or source)))
        return self

    def tmpfs(self, target: str) -> Sandbox:
        self.ops.append(("--tmpfs", target))
        return self

    def dir(self, target: str, mode: int = 0o755) -> Sandbox:
        self.ops.append(("--perms", f"{mode:04o}", "--dir", target))
        return self

    def symlink(self, link_target: str, path: str) -> Sandbox:
        self.ops.append(("--symlink", link_target, path))
        return self

    def proc(self, target: str = "/proc") -> Sandbox:
        self.ops.append(("--proc", target))
        return self

    def dev(self, target: str = "/dev") -> Sandbox:
        """bwrap's minimal /dev, with its own tmpfs /dev/shm."""
        self.ops.append(("--dev", target))
        self.ops.append(("--tmpfs", f"{target.rstrip('/')}/shm"))
        return self

    def file(self, target: str, content: str | bytes) -> Sandbox:
        """A read-only, world-readable file made from `content` (bwrap reads it from a pipe; nothing on the
        host's disk). World-readable as the host's own would be: bwrap's default 0600 hides a resolv.conf or
        nsswitch.conf from processes that drop root (apt's download methods run as _apt)."""
        self.files.append((target, content.encode() if isinstance(content, str) else content))
        self.ops.append(("--perms", "0644"))
        self.ops.append(("--ro-bind-data", f"@{len(self.files) - 1}", target))
        return self

    def remount_ro(self, target: str) -> Sandbox:
        self.ops.append(("--remount-ro", target))
        return self

    # --- building blocks
    def host_system(self, etc: Iterable[str] = TOOLBOX_ETC, *, resolv_conf: str | None = None) -> Sandbox:
        """The host's /usr read-only with the merged-/usr links, and a /etc holding only `etc`.

        `resolv_conf`: the sandbox's own instead of the host's (a network of its own has its own DNS).
        """
        if resolv_conf is not None:
            etc = [name for name in etc if name != "resolv.conf"]
        self.ro_bind("/usr")
        for name in _MERGED_USR:
            host = Path("/") / name
            if host.is_symlink():
                self.symlink(os.readlink(host), f"/{name}")
            elif host.is_dir():
                self.ro_bind(host)
        self.dir("/etc")
        for name in etc:
            path = Path("/etc") / name
            if os.path.lexists(path) and path.exists():
                self.ro_bind(path, optional=True)
        # Files only: the host's other name services (systemd's userdb, LDAP) are not reachable, and
        # nss-systemd would otherwise report root's account as locked to sshd.
        self.file("/etc/nsswitch.conf", NSSWITCH)
        if resolv_conf is not None:
            self.file("/etc/resolv.conf", resolv_conf)
        return self

    def python_runtime(self) -> Sandbox:
        """This interpreter and its environment read-only, where they are outside /usr (a venv, pyenv)."""
        for prefix in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}:
            if not _under(prefix, Path("/usr")):
                self.ro_bind(prefix)
        return self

    # --- argv
    def argv(self, command: Sequence[str], *, info_fd: int, block_fd: int, file_fds: Sequence[int] = ()) -> list[str]:
        if not command:
            raise SandboxError("nothing to run in the sandbox")
        argv = [
            BWRAP,
            "--unshare-user",
            "--userns-block-fd",
            str(block_fd),
            "--info-fd",
            str(info_fd),
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            *(["--unshare-net"] if self.unshare_net else []),
            "--new-session",
            "--die-with-parent",
        ]
        for op in self.ops:
            if op[0] == "--ro-bind-data":
                index = int(op[1][1:])
                op = (op[0], str(file_fds[index]) if index < len(file_fds) else "-1", op[2])
            argv += op
        argv += ["--chdir", self.chdir, "--cap-drop", "ALL"]
        for cap in self.caps:
            argv += ["--cap-add", f"CAP_{cap}"]
        argv += ["--", *command]
        return argv


@dataclass
class SandboxProcess:
    """A started sandbox: `process` is bwrap outside, `init_pid` its first process inside (host pid)."""

    process: subprocess.Popen[bytes]
    init_pid: int

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_setup(self, timeout: float = 20.0) -> None:
        """Wait until bwrap has set the sandbox up and started the command (its init has a child).

        Before that, bwrap is still configuring the sandbox's namespaces (the loopback of its own network,
        say), which nothing outside must touch yet.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SandboxError(f"the sandbox ended while starting (exit {self.process.returncode})")
            if _has_child(self.init_pid):
                return
            time.sleep(0.01)
        raise SandboxError(f"the sandbox did not start its command within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> int:
        """Kill the sandbox's first process: the kernel ends every process of its PID namespace, then bwrap returns."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def _has_child(pid: int) -> bool:
    return bool(children(pid))


def children(pid: int) -> list[int]:
    """The host pids of `pid`'s child processes."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def bwrap_path() -> str:
    found = shutil.which(BWRAP)
    if found is None:
        raise SandboxError("bubblewrap (bwrap) is not installed; jobs cannot run without their sandbox")
    return found


def launch(
    sandbox: Sandbox,
    command: Sequence[str],
    *,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    stdin: IO[Any] | int | None = subprocess.DEVNULL,
    timeout: float = 20.0,
) -> SandboxProcess:
    """Start `command` in the sandbox; returns once it runs inside, with the identity uid/gid map in place."""
    bwrap = bwrap_path()
    info_read, info_write = os.pipe()
    block_read, block_write = os.pipe()
    file_fds = [_data_fd(content) for _, content in sandbox.files]
    argv = sandbox.argv(command, info_fd=info_write, block_fd=block_read, file_fds=file_fds)
    argv[0] = bwrap
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", **sandbox.env}
    try:
        try:
            process = subprocess.Popen(  # noqa: S603 - an argv list
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=env,
                pass_fds=(info_write, block_read, *file_fds),
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"could not start bwrap: {exc}") from exc
        os.close(info_write)
        info_write = -1
        os.close(block_read)
        block_read = -1
        info = _read_info(info_read, process, timeout)
        init_pid = int(info["child-pid"])
        try:
            for name in ("uid_map", "gid_map"):
                Path(f"/proc/{init_pid}/{name}").write_text(IDENTITY_MAP)
            os.write(block_write, b"1")
        except OSError as exc:
            process.kill()
            process.wait()
            raise SandboxError(f"could not map the sandbox's user namespace: {exc}") from exc
    finally:
        for fd in (info_read, info_write, block_read, block_write, *file_fds):
            if fd >= 0:
                os.close(fd)
    return SandboxProcess(process, init_pid)


def run(
    sandbox: Sandbox, command: Sequence[str], *, timeout: float = 60.0, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short command in the sandbox and collect its output (tests, probes)."""
    started = launch(
        sandbox, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE if input_text else None
    )
    out, err = started.process.communicate(input_text.encode() if input_text else None, timeout=timeout)
    return subprocess.CompletedProcess(
        started.process.args, started.process.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )


def _data_fd(content: bytes) -> int:
    """A readable fd holding `content`: an unlinked temporary file (no pipe-size limit, nothing left behind)."""
    fd = os.memfd_create("ims-sandbox-file", os.MFD_CLOEXEC)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_info(fd: int, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dict(json.loads(data))
        except ValueError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            process.kill()
            process.wait()
            raise SandboxError(f"bwrap did not start its sandbox within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = process.wait()
            raise SandboxError(f"bwrap could not set up the sandbox (exit {code})")
        data += chunk


def _under(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
    except ValueError:
        return False
    return True


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The only environment a sandbox starts with: nothing of the stage's (no token, no S3 keys)."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra or {})
    return env

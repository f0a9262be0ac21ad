"""A job session's own network: a network namespace wired to the outside by slirp4netns.

With `IMS_JOB_NETWORK=isolated` (the default where `slirp4netns` is installed) the session sandbox gets
`bwrap --unshare-net`: its own loopback, nothing of the host's. `slirp4netns` (a user-mode TCP/IP stack
that runs outside the sandbox, as the stage's child) gives it a `tap0` with 10.0.2.100/24, a gateway
10.0.2.2 and a DNS forwarder at 10.0.2.3, so outbound connections (package repositories) work. With
`--disable-host-loopback` the gateway does not lead to the host's 127.0.0.1: the host's loopback
services (the IMS API, the embedded SeaweedFS) are out of reach. The job's sshd is reached from outside
through a host port forward on IMS_SSH_LISTEN:port, added through slirp4netns's API socket, so
`connection_info` is unchanged.

slirp4netns ends with the sandbox: the stage kills it when it stops the sandbox, and `--exit-fd` makes
it exit by itself when the stage goes away.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SLIRP4NETNS = "slirp4netns"
NETWORK_MODES = ("isolated", "host")
# What slirp4netns --configure sets up in the namespace.
GUEST_DNS = "10.0.2.3"
GUEST_ADDRESS = "10.0.2.100"
TAP = "tap0"
MTU = 65520
RUNTIME_DIR = "/run"


class SlirpError(Exception):
    """slirp4netns could not connect the sandbox's network namespace."""


def slirp4netns_path() -> str | None:
    return shutil.which(SLIRP4NETNS)


def choose_isolation(mode: str, obstacle: str | None = None) -> tuple[bool, str | None]:
    """IMS_JOB_NETWORK's answer for one sandbox: (own network?, why not, to warn about).

    `mode` is "isolated", "host", or "" (isolated where slirp4netns is installed); `obstacle` is what else
    keeps this sandbox from an own network. `isolated` that cannot be raises SlirpError.
    """
    if mode == "host":
        return False, None
    reason = "slirp4netns is not installed" if slirp4netns_path() is None else obstacle
    if reason is None:
        return True, None
    if mode == "isolated":
        raise SlirpError(f"IMS_JOB_NETWORK=isolated, but {reason}")
    return False, reason


def resolv_conf(host_text: str) -> str:
    """The host's resolv.conf with slirp4netns's DNS forwarder as the only name server."""
    kept = [
        line
        for line in host_text.splitlines()
        if line.split()[:1] and line.split()[0] in ("search", "domain", "options", "sortlist")
    ]
    return "\n".join([f"nameserver {GUEST_DNS}", *kept]) + "\n"


def host_resolv_conf(path: Path = Path("/etc/resolv.conf")) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return resolv_conf(text)


@dataclass
class SlirpNetwork:
    """slirp4netns attached to the network namespace of a sandbox's first process."""

    process: subprocess.Popen[bytes]
    api_socket: Path
    exit_write: int

    @classmethod
    def attach(cls, pid: int, *, log: int | None = None, timeout: float = 10.0) -> SlirpNetwork:
        binary = slirp4netns_path()
        if binary is None:
            raise SlirpError("slirp4netns is not installed")
        _sweep_stale_dirs()
        # Outside every sandbox: a session must never reach this socket (it could add port forwards).
        # /run (root's tmpfs) rather than /tmp: the job's /tmp is the user-visible work area on remote nodes.
        directory = Path(tempfile.mkdtemp(prefix="ims-slirp-", dir=RUNTIME_DIR if os.path.isdir(RUNTIME_DIR) else None))
        directory.chmod(0o700)
        api_socket = directory / "api.sock"
        ready_read, ready_write = os.pipe()
        exit_read, exit_write = os.pipe()
        argv = [
            binary,
            "--configure",
            f"--mtu={MTU}",
            "--disable-host-loopback",
            "--api-socket",
            str(api_socket),
            "--ready-fd",
            str(ready_write),
            "--exit-fd",
            str(exit_read),
            str(pid),
            TAP,
        ]
        try:
            try:
                process = subprocess.Popen(  # noqa: S603 - an argv list
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log if log is not None else subprocess.DEVNULL,
                    stderr=log if log is not None else subprocess.DEVNULL,
                    pass_fds=(ready_write, exit_read),
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                os.close(exit_write)
                shutil.rmtree(directory, ignore_errors=True)
                raise SlirpError(f"could not start slirp4netns: {exc}") from exc
            os.close(ready_write)
            ready_write = -1
            network = cls(process, api_socket, exit_write)
            if not _wait_ready(ready_read, process, timeout):
                network.stop()
                raise SlirpError(f"slirp4netns did not connect the sandbox's network (exit {process.poll()})")
            return network
        finally:
            for fd in (ready_read, ready_write, exit_read):
                if fd >= 0:
                    os.close(fd)

    def running(self) -> bool:
        return self.process.poll() is None

    def call(self, request: dict[str, object], timeout: float = 5.0) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.api_socket))
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        try:
            return dict(json.loads(data))
        except ValueError as exc:
            raise SlirpError(f"slirp4netns answered {data[:200]!r}") from exc

    def forward_tcp(self, host_addr: str, host_port: int, guest_port: int) -> None:
        """Forward host_addr:host_port on the host to guest_port in the sandbox."""
        answer = self.call(
            {
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": "tcp",
                    "host_addr": host_addr,
                    "host_port": host_port,
                    "guest_port": guest_port,
                },
            }
        )
        if "error" in answer:
            raise SlirpError(f"slirp4netns could not forward {host_addr}:{host_port}: {answer['error']}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.exit_write >= 0:
            os.close(self.exit_write)  # slirp4netns exits when this closes
            self.exit_write = -1
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        shutil.rmtree(self.api_socket.parent, ignore_errors=True)


def _sweep_stale_dirs(min_age: float = 60.0) -> None:
    """Remove the socket directories of slirp4netns processes that are gone (their stage was SIGKILLed)."""
    now = time.time()
    for directory in Path(RUNTIME_DIR).glob("ims-slirp-*"):
        try:
            if now - directory.stat().st_mtime < min_age:
                continue  # may be one being set up right now
        except OSError:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(directory / "api.sock"))
            except OSError:
                shutil.rmtree(directory, ignore_errors=True)


def _wait_ready(fd: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            with contextlib.suppress(OSError):
                return os.read(fd, 1) == b"1"
            return False
        if process.poll() is not None:
            return False
    return False

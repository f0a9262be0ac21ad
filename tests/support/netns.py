"""Test "remote build nodes": network namespaces on this host, each with its own sshd on port 22.

Each node is a network namespace linked to a bridge on the host by a veth pair, in a private subnet
10.213.N.0/24 chosen free at start (the host side of the bridge is .1, nodes .11, .12, ...). A node's sshd
is started with `nsenter --net=` (not `ip netns exec`, which remounts /sys) inside `unshare --mount` with
a tmpfs on /tmp, so each node has its own /tmp (its `/tmp/ims_<job_id>` directories) while it shares the
host's other files (python3, squashfs-tools, bubblewrap). Everything made here is removed by `stop()`:
the sshd by PID, the processes still in the namespace by PID, the namespaces and links.

Services the nodes must reach (IMS, S3) listen on `host_address`. Traffic goes only to these addresses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ims.embedded.ports import free_port, wait_for_port
from tests.support.servers import ImsServer

STATE_ROOT = Path("/run/ims-test-nodes")
SUBNET_PREFIX = "10.213"
# In the node's own mount namespace: a private /tmp, then sshd in the foreground (its PID is ours).
_NODE_SHELL = 'set -e; mount -t tmpfs -o mode=1777,size=2g ims-node-tmp /tmp; exec /usr/sbin/sshd -D -f "$1" -E "$2"'


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-4", "-o", "addr"], check=True, capture_output=True, text=True).stdout
    used += subprocess.run(["ip", "-4", "route"], check=True, capture_output=True, text=True).stdout
    for number in range(1 + os.getpid() % 200, 251):
        if f"{SUBNET_PREFIX}.{number}." not in used:
            return number
    raise RuntimeError(f"no free {SUBNET_PREFIX}.N.0/24 subnet for test nodes")


@dataclass
class TestNode:
    __test__ = False

    name: str  # the network namespace
    address: str
    directory: Path
    host_link: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    def start_sshd(self) -> None:
        config = self.directory / "sshd_config"
        argv = [
            "nsenter",
            f"--net={self.netns}",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _NODE_SHELL,
            "ims-test-node",
            str(config),
            str(self.log),
        ]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        if not self.wait_port(22, 15):
            raise RuntimeError(f"sshd of test node {self.name} did not listen: {self.log.read_text(errors='replace')}")

    def wait_port(self, port: int, timeout: float) -> bool:
        return wait_for_port(self.address, port, timeout)

    def stop_sshd(self) -> None:
        """Stop the node's sshd listener only (sessions it started live on, as on a real node)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def new_host_key(self) -> None:
        """Give the node a new host key and restart its sshd (as a reinstalled node would)."""
        self.stop_sshd()
        self.host_key.unlink()
        self.host_key.with_suffix(".pub").unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        self.start_sshd()

    def pids(self) -> list[int]:
        """Every process in the node's network namespace (sshd, sessions, jobs)."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(word) for word in out.split() if word.isdigit()]

    def run(self, command: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command as the node sees things (its network, its /tmp): inside the sshd's namespaces."""
        assert self.process is not None
        return subprocess.run(
            ["nsenter", f"--target={self.process.pid}", "--net", "--mount", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@dataclass
class TestNodes:
    __test__ = False  # not a test class (pytest collects Test* names)

    tag: str
    subnet: int
    directory: Path
    bridge: str
    nodes: list[TestNode] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def unreachable_address(self, index: int) -> str:
        """An address in the subnet that nothing answers: packets to it go nowhere (a dead node)."""
        return f"{SUBNET_PREFIX}.{self.subnet}.{200 + index}"

    @classmethod
    def start(cls, count: int, authorized_key: str, path: str | None = None) -> TestNodes:
        """`path`: the PATH of SSH sessions on the nodes (e.g. with a virtualenv's kiwi-ng in front)."""
        tag = uuid.uuid4().hex[:4]
        subnet = _free_subnet()
        directory = STATE_ROOT / tag
        directory.mkdir(parents=True, mode=0o700)
        group = cls(tag, subnet, directory, f"imr{tag}br")
        try:
            _ip("link", "add", "name", group.bridge, "type", "bridge")
            _ip("addr", "add", f"{group.host_address}/24", "dev", group.bridge)
            _ip("link", "set", group.bridge, "up")
            for index in range(count):
                group._add_node(index, authorized_key, path)
        except BaseException:
            group.stop()
            raise
        return group

    def _add_node(self, index: int, authorized_key: str, path: str | None) -> TestNode:
        name = f"imr-{self.tag}-n{index}"
        host_link, node_link = f"imr{self.tag}h{index}", f"imr{self.tag}n{index}"
        node = TestNode(name, f"{SUBNET_PREFIX}.{self.subnet}.{11 + index}", self.directory / name, host_link)
        node.directory.mkdir(mode=0o700)
        self.nodes.append(node)  # from here on stop() removes what exists of it
        _ip("netns", "add", name)
        _ip("link", "add", host_link, "type", "veth", "peer", "name", node_link)
        _ip("link", "set", node_link, "netns", name)
        _ip("link", "set", host_link, "master", self.bridge)
        _ip("link", "set", host_link, "up")
        _ip("-n", name, "addr", "add", f"{node.address}/24", "dev", node_link)
        _ip("-n", name, "link", "set", node_link, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", self.host_address)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(node.host_key)], check=True)
        (node.directory / "authorized_keys").write_text(authorized_key.strip() + "\n")
        (node.directory / "sshd_config").write_text(
            "\n".join(
                [
                    "Port 22",
                    f"ListenAddress {node.address}",
                    f"HostKey {node.host_key}",
                    "PidFile none",
                    f"AuthorizedKeysFile {node.directory / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 100:30:200",
                    "MaxSessions 50",
                    *([f"SetEnv PATH={path}"] if path else []),
                    "",
                ]
            )
        )
        node.start_sshd()
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop_sshd()
            for pid in node.pids():  # job processes left on the node: stop them by PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while node.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            subprocess.run(["ip", "link", "del", node.host_link], capture_output=True)
            subprocess.run(["ip", "netns", "del", node.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_ims_at(address: str, data_dir: Path, env_extra: dict[str, str], port: int | None = None) -> ImsServer:
    """`ims serve` listening on `address` (the bridge's host side), so the test nodes reach it; `port` brings a
    stopped server back where its jobs look for it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({"IMS_DATA_DIR": str(data_dir), "IMS_LOG_LEVEL": "INFO"})
    env.update(env_extra)
    for _ in range(3):
        port = port or free_port(address)
        log_path = data_dir / "server.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "ims", "serve", "--host", address, "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = ImsServer(f"http://{address}:{port}", env, data_dir, process, log_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/healthz/ready", timeout=2).status_code == 200:
                    return server
            time.sleep(0.1)
        if process.poll() is None:
            server.stop()
            break
    raise RuntimeError(
        f"ims serve did not start on {address}:\n{(data_dir / 'server.log').read_text(errors='replace')}"
    )


def stop_ims_keeping_jobs(server: ImsServer) -> None:
    """Stop the server as a crash or an upgrade would: its jobs keep running (on their nodes)."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(5)


class ArchiveProxy:
    """A small reverse proxy on the nodes' bridge for the Debian archive this machine's apt uses: the nodes
    have no route out, so a create job's repositories are templated to `url` and fetched through here."""

    def __init__(self, address: str, upstream: str) -> None:
        import http.server
        import threading
        import urllib.error
        import urllib.request

        base = upstream.rstrip("/")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def _forward(self, body: bool) -> None:
                request = urllib.request.Request(base + self.path, method="GET" if body else "HEAD")  # noqa: S310
                try:
                    upstream_response = urllib.request.urlopen(request, timeout=60)  # noqa: S310
                except urllib.error.HTTPError as exc:
                    upstream_response = exc
                except OSError:
                    self.send_error(502)
                    return
                with upstream_response:
                    self.send_response(upstream_response.status)
                    for name in ("Content-Type", "Content-Length", "Last-Modified", "ETag"):
                        value = upstream_response.headers.get(name)
                        if value:
                            self.send_header(name, value)
                    if upstream_response.headers.get("Content-Length") is None:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    if body:
                        while chunk := upstream_response.read(1 << 16):
                            self.wfile.write(chunk)

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                self._forward(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._forward(False)

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

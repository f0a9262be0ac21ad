"""A customize session's own network (IMS_JOB_NETWORK=isolated, slirp4netns), seen from real sessions.

From a jailed and an unjailed session (stock `ssh` through the job's unchanged connection_info): a
service the test starts on the host's loopback, the IMS API and the S3 endpoint (loopback too) are not
reachable, neither at 127.0.0.1 nor through slirp4netns's gateway 10.0.2.2; a service on a non-loopback
address of this machine (a veth link the test makes, nothing outside is contacted) is. The session's
resolv.conf names slirp4netns's DNS forwarder. A change and the signal file end the job in `success`
with the change in the new image, and the forwarded SSH port is gone with the sandbox.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from tests.jobs.kit import add_image, endpoint, logs, post_customize, ssh_ok, ssh_signal, wait_status
from tests.jobs.test_sandbox_e2e import _new_image_file
from tests.stages.kit import KeyPair
from tests.support.images import RegisteredImage
from tests.support.servers import ImsServer

from ims.artifacts.s3 import ArtifactStore
from ims.stages.slirp import slirp4netns_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(slirp4netns_path() is None, reason="slirp4netns is not installed"),
]

B = "/bin/busybox"
# TEST-NET-2 (RFC 5737): never routed anywhere; here only on a veth pair of this machine.
OUTER_ADDRESS = "198.51.100.1"


class Listener:
    """A TCP service that answers every connection with `reply` and closes it."""

    def __init__(self, address: str, reply: bytes) -> None:
        self.sock = socket.create_server((address, 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def outer_address() -> Iterator[str]:
    """A non-loopback address of this machine: one end of a veth pair the test makes (and removes)."""
    name = f"imsn{uuid.uuid4().hex[:6]}"
    peer = f"{name}p"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{OUTER_ADDRESS}/24", "dev", name], check=True)
        for link in (name, peer):
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
        yield OUTER_ADDRESS
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def _reach(api: httpx.Client, key: KeyPair, record: dict[str, object], host: str, port: int) -> str:
    """What the session reads from host:port (empty when it cannot connect), plus nc's exit status."""
    return ssh_ok(api, key, record, f": | {B} nc -w 3 {host} {port}; echo rc=$?")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_sessions_have_their_own_network(
    job_server: ImsServer,
    jobs_api: httpx.Client,
    stored_image: RegisteredImage,
    artifact_store: ArtifactStore,
    job_key: KeyPair,
    key_id: str,
    outer_address: str,
    tmp_path: Path,
) -> None:
    loopback = Listener("127.0.0.1", b"loopback-secret\n")
    outer = Listener(outer_address, b"outer-ok\n")
    api_port = urlsplit(job_server.url).port
    s3_port = urlsplit(job_server.env["S3_ENDPOINT"]).port
    assert api_port and s3_port
    for scratch in ("j", "u"):
        (tmp_path / scratch).mkdir()
    image_id = add_image(jobs_api, stored_image)
    jobs = {
        "unjailed": post_customize(jobs_api, image_id, key_id, jail=False),
        "jailed": post_customize(jobs_api, image_id, key_id, jail=True),
    }
    try:
        waiting = {name: wait_status(jobs_api, job["id"], {"waiting_on_user"}) for name, job in jobs.items()}
        for name, record in waiting.items():
            assert "own network via slirp4netns" in logs(jobs_api, record["id"]), name
            # The host's loopback services: not at 127.0.0.1 (the sandbox's own loopback) nor via the gateway.
            for port in (loopback.port, api_port, s3_port):
                for host in ("127.0.0.1", "10.0.2.2"):
                    seen = _reach(jobs_api, job_key, record, host, port)
                    assert "rc=1" in seen and "loopback-secret" not in seen, (name, host, port, seen)
            # A service on a non-loopback address of the host is reachable (outbound connections work).
            seen = _reach(jobs_api, job_key, record, outer_address, outer.port)
            assert "outer-ok" in seen and "rc=0" in seen, (name, seen)
            # The session's own interfaces: loopback and slirp4netns's tap0, nothing of the host's.
            links = ssh_ok(jobs_api, job_key, record, f"{B} cat /proc/net/dev")
            names = {line.split(":")[0].strip() for line in links.splitlines() if ":" in line}
            assert names == {"lo", "tap0"}, (name, links)
            resolv = ssh_ok(jobs_api, job_key, record, "cat /etc/resolv.conf")
            assert resolv.startswith("nameserver 10.0.2.3\n") and resolv.count("nameserver") == 1, (name, resolv)

        # connection_info is as before: the host address and port the forward listens on.
        host, port = endpoint(waiting["jailed"], "customer_access")
        ssh_signal(jobs_api, job_key, waiting["jailed"], f"echo isolated-edit > /etc/motd && {B} touch /tmp/complete")
        done = wait_status(jobs_api, waiting["jailed"]["id"], {"success"})
        assert _new_image_file(artifact_store, jobs_api, done, tmp_path / "j", "etc/motd") == b"isolated-edit\n"
        # The forwarded port is gone with the sandbox (slirp4netns ended with it).
        assert not _port_open(host, port)

        ssh_signal(
            jobs_api,
            job_key,
            waiting["unjailed"],
            "echo isolated-unjailed > /mnt/image/image-root/etc/motd && touch /mnt/image/complete",
        )
        done = wait_status(jobs_api, waiting["unjailed"]["id"], {"success"})
        assert _new_image_file(artifact_store, jobs_api, done, tmp_path / "u", "etc/motd") == b"isolated-unjailed\n"
    finally:
        loopback.close()
        outer.close()
        for job in jobs.values():
            jobs_api.delete(f"/v3/jobs/{job['id']}")

"""IMS_JOB_NETWORK: the session sandbox's own network (slirp4netns) or the host's, chosen and reported."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.stages.kit import KeyPair, LocalImage, base_env, reporter_for, ssh
from tests.stages.test_stage_sshenv import _port_open, _start

from ims.stages import slirp as slirp_module
from ims.stages import sshenv as sshenv_module
from ims.stages.environment import JobEnvironment, JobEnvironmentError
from ims.stages.reporting import StageError
from ims.stages.signals import Verdict
from ims.stages.slirp import resolv_conf, slirp4netns_path

needs_sshd = pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="openssh-server is not installed")
needs_slirp = pytest.mark.skipif(slirp4netns_path() is None, reason="slirp4netns is not installed")
B = "/bin/busybox"


@pytest.fixture
def loopback_service() -> Iterator[int]:
    """A TCP service on the host's 127.0.0.1 that answers `loopback-secret`."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"loopback-secret\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(5)


def test_the_setting_is_parsed(tmp_path: Path) -> None:
    def network(value: str) -> str:
        return JobEnvironment.from_env(base_env(tmp_path, IMS_JOB_NETWORK=value)).job_network

    assert JobEnvironment.from_env(base_env(tmp_path)).job_network == ""
    assert network("Isolated") == "isolated" and network("host") == "host"
    assert network("auto") == "" and network(" ") == ""
    with pytest.raises(JobEnvironmentError, match="IMS_JOB_NETWORK"):
        network("bridge")


def test_the_session_resolv_conf_names_slirps_dns_and_keeps_the_hosts_search() -> None:
    host = "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch example.com\noptions ndots:2\n"
    assert resolv_conf(host) == "nameserver 10.0.2.3\nsearch example.com\noptions ndots:2\n"
    assert resolv_conf("") == "nameserver 10.0.2.3\n"


@needs_sshd
@needs_slirp
@pytest.mark.parametrize("jail", [True, False])
def test_an_isolated_session_cannot_reach_the_hosts_loopback(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int, loopback_service: int, jail: bool
) -> None:
    stage, log = _start(job_dir, test_image, user_key, ssh_port, jail=jail, IMS_JOB_NETWORK="isolated")
    # (No /dev/null in a jail without DKMS: nc's stdin is an empty pipe.)
    probe = "; ".join(f": | {B} nc -w 2 {host} {loopback_service}; echo rc=$?" for host in ("127.0.0.1", "10.0.2.2"))
    seen = ssh(user_key, ssh_port, f"{probe}; cat /etc/resolv.conf")
    assert seen.returncode == 0, seen.stderr
    assert "loopback-secret" not in seen.stdout
    assert seen.stdout.count("rc=1") == 2, seen.stdout + seen.stderr  # nc ran and could not connect
    assert "nameserver 10.0.2.3" in seen.stdout
    flag = "/tmp/complete" if jail else "/mnt/image/complete"
    assert ssh(user_key, ssh_port, f"{B} touch {flag}").returncode in (0, 255)
    assert stage.join() is Verdict.COMPLETE
    assert not _port_open(ssh_port)
    text = log.text()  # type: ignore[attr-defined]
    assert "own network via slirp4netns" in text and "slirp4netns's DNS (10.0.2.3)" in text


@needs_sshd
def test_the_host_network_is_kept_when_asked_for(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int, loopback_service: int
) -> None:
    stage, log = _start(job_dir, test_image, user_key, ssh_port, jail=True, IMS_JOB_NETWORK="host")
    seen = ssh(user_key, ssh_port, f": | {B} nc -w 2 127.0.0.1 {loopback_service}; cat /etc/resolv.conf")
    assert seen.returncode == 0, seen.stderr
    assert "loopback-secret" in seen.stdout
    assert Path("/etc/resolv.conf").read_text() in seen.stdout
    assert ssh(user_key, ssh_port, "touch /tmp/complete").returncode in (0, 255)
    assert stage.join() is Verdict.COMPLETE
    text = log.text()  # type: ignore[attr-defined]
    assert "host network" in text and "warning" not in text


@needs_sshd
def test_without_slirp4netns_the_default_is_the_host_network_with_a_warning(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slirp_module, "slirp4netns_path", lambda: None)
    stage, log = _start(job_dir, test_image, user_key, ssh_port, jail=True)
    assert ssh(user_key, ssh_port, "touch /tmp/complete").returncode in (0, 255)
    assert stage.join() is Verdict.COMPLETE
    text = log.text()  # type: ignore[attr-defined]
    assert "warning: slirp4netns is not installed" in text and "host network" in text


def test_isolated_without_slirp4netns_is_an_error(
    job_dir: Path, test_image: LocalImage, user_key: KeyPair, ssh_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slirp_module, "slirp4netns_path", lambda: None)
    env = JobEnvironment.from_env(
        base_env(job_dir, IMS_PUBLIC_KEY=user_key.public, IMS_SSH_PORT=str(ssh_port), IMS_JOB_NETWORK="isolated")
    )
    reporter, _ = reporter_for(env)
    with pytest.raises(StageError, match="slirp4netns is not installed"):
        sshenv_module.isolated_network(env, reporter)


def test_an_ipv6_listen_address_cannot_be_forwarded(tmp_path: Path) -> None:
    """slirp4netns forwards IPv4 only: the default falls back to the host network, `isolated` refuses."""
    env = JobEnvironment.from_env(base_env(tmp_path, IMS_SSH_LISTEN="::1"))
    reporter, log = reporter_for(env)
    if slirp4netns_path() is not None:
        assert sshenv_module.isolated_network(env, reporter) is False
        assert "warning: slirp4netns forwards IPv4 only" in log.text()  # type: ignore[attr-defined]
    strict = JobEnvironment.from_env(base_env(tmp_path, IMS_SSH_LISTEN="::1", IMS_JOB_NETWORK="isolated"))
    with pytest.raises(StageError, match="isolated, but"):
        sshenv_module.isolated_network(strict, reporter)

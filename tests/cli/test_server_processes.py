"""`ims serve --workers 2`: each server process listens on its own socket, the kernel spreads connections over
them, a restarted process takes connections again, and a port in use is refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.support.servers import ImsServer, start_ims_server

CONNECTIONS = 24  # all on one process by chance: 2 × 2^-24


@pytest.fixture
def two_processes(work_root: Path, s3_env: dict[str, str], tmp_path: Path) -> Iterator[ImsServer]:
    server = start_ims_server(tmp_path / "ims", s3_env, args=["--workers", "2"])
    try:
        yield server
    finally:
        server.stop()


def _port(server: ImsServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _listeners(port: int) -> list[int]:
    """The PID holding each listening socket on the port (one socket shared by several processes counts once,
    under none of them)."""
    out = subprocess.run(["ss", "-ltnpH", f"( sport = :{port} )"], capture_output=True, text=True, check=True).stdout
    holders = [re.findall(r"pid=(\d+)", line) for line in out.splitlines() if line.strip()]
    return [int(pids[0]) for pids in holders if len(set(pids)) == 1]


def _wait_for_listeners(port: int, count: int, exclude: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = [pid for pid in _listeners(port) if pid not in exclude]
        if len(set(pids)) >= count:
            return sorted(set(pids))
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} processes listen on {port}: {_listeners(port)}")


def _served_by(port: int, clients: list[httpx.Client]) -> Counter[int]:
    """Which process holds each client's connection (each has made one request and keeps it open)."""
    # All at once, as a load balancer or a benchmark opens them: a shared socket gave most to one process.
    with ThreadPoolExecutor(len(clients)) as pool:
        statuses = list(pool.map(lambda client: client.get("/v3/images", timeout=10).status_code, clients))
    assert statuses == [200] * len(clients)
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return Counter(int(pid) for pid in re.findall(r"pid=(\d+)", out))


def _spread(server: ImsServer, port: int) -> Counter[int]:
    """Open CONNECTIONS new connections, one request each, and count them by the process holding them."""
    clients = [httpx.Client(base_url=server.url) for _ in range(CONNECTIONS)]
    try:
        return _served_by(port, clients)
    finally:
        for client in clients:
            client.close()


def test_connections_are_spread_over_the_processes(two_processes: ImsServer) -> None:
    port = _port(two_processes)
    pids = _wait_for_listeners(port, 2)
    served = _spread(two_processes, port)
    assert set(served) == set(pids), served
    assert sum(served.values()) == CONNECTIONS


def test_a_restarted_process_takes_connections_and_none_hang(two_processes: ImsServer) -> None:
    port = _port(two_processes)
    first, second = _wait_for_listeners(port, 2)
    os.kill(first, signal.SIGKILL)
    pids = _wait_for_listeners(port, 2, exclude={first})
    assert second in pids and first not in pids
    # No connection may land on a socket nobody accepts on (the dead process's): every request is answered.
    served = _spread(two_processes, port)
    assert set(served) == set(pids), served


def test_a_port_in_use_is_refused(two_processes: ImsServer, s3_env: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **s3_env, "IMS_DATA_DIR": str(tmp_path / "second")}
    second = subprocess.run(
        [sys.executable, "-m", "ims", "serve", "--host", "127.0.0.1", "--port", str(_port(two_processes)),
         "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert second.returncode == 3, second.stderr
    assert "address already in use" in second.stderr
    assert httpx.get(f"{two_processes.url}/v3/images", timeout=10).status_code == 200

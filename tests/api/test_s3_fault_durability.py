"""kill -9 durability: every write IMS acknowledged is there after the server was SIGKILLed mid-load."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.support.servers import start_ims_server

pytestmark = pytest.mark.slow

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEONLYFORTESTS test@ims"
WRITERS = 4
KILL_AFTER = int(os.environ.get("IMS_DURABILITY_WRITES", "1000"))


def test_no_acknowledged_write_is_lost_on_kill_9(tmp_path: Path, s3_env: dict[str, str]) -> None:
    server = start_ims_server(tmp_path / "ims", s3_env)
    acknowledged: list[str] = []
    failed = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    response = client.post("/v3/public-keys", json={"name": f"w{worker}-{n}", "public_key": KEY})
                except httpx.HTTPError:
                    with lock:
                        failed[0] += 1
                    continue
                if response.status_code == 201:
                    with lock:
                        acknowledged.append(response.json()["id"])

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    while len(acknowledged) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)  # mid-load: requests in flight are cut
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(15)
    restarted = start_ims_server(tmp_path / "ims", s3_env)
    try:
        stored = {record["id"] for record in httpx.get(f"{restarted.url}/v3/public-keys", timeout=60).json()}
    finally:
        restarted.stop()
    lost = [record_id for record_id in acknowledged if record_id not in stored]
    print(f"kill -9 durability: {len(acknowledged)} acknowledged, {len(lost)} lost, "
          f"{len(stored) - len(set(acknowledged) & stored)} stored but unacknowledged (cut in flight), "
          f"{failed[0]} requests cut")
    assert len(acknowledged) >= KILL_AFTER
    assert lost == []

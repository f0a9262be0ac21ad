"""Remote build nodes against real SSH hosts (network namespaces with their own sshd, tests/support/netns.py):
IMS's node key, live status from a real probe, trust on first use of host keys, selection at POST /jobs.

The server here runs no job workers: jobs stay queued, which is all selection needs. Jobs that really run
on nodes are in test_remote_runner.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.jobs.kit import add_image, add_public_key
from tests.stages.kit import KeyPair, LocalImage
from tests.support.contract import NOT_FOUND, assert_invalid, assert_problem
from tests.support.images import RegisteredImage, register_in_s3
from tests.support.netns import TestNodes
from tests.support.servers import ImsServer, start_ims_server

from ims.artifacts.s3 import ArtifactStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and sshd need root"),
]

PROBE_TIMEOUT = 8.0  # generous: on a busy 2-CPU test machine one SSH login alone can take 2-3 s
STATUS_FIELDS = {"xname", "sshStatus", "podmanStatus", "nodeArch", "numCurrentJobs", "ableToRunJobs"}


@pytest.fixture(scope="module")
def server(work_root: Path, s3_env: dict[str, str]) -> Iterator[ImsServer]:
    env = {
        "IMS_RUN_WORKERS": "false",
        "IMS_REMOTE_PROBE_TIMEOUT": str(PROBE_TIMEOUT),
        "IMS_REMOTE_STATUS_CACHE_SECONDS": "1",
    }
    started = start_ims_server(work_root / f"ims-remote-{uuid.uuid4().hex[:6]}", s3_env, env)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def api(server: ImsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def nodes(api: httpx.Client) -> Iterator[TestNodes]:
    public_key = api.get("/v3/remote-build-nodes/public-key").json()["public_key"]
    group = TestNodes.start(7, public_key)
    yield group
    group.stop()


@pytest.fixture(autouse=True)
def no_nodes_left(api: httpx.Client) -> Iterator[None]:
    yield
    api.delete("/v3/jobs")
    api.delete("/v3/remote-build-nodes")


def register(api: httpx.Client, *xnames: str) -> None:
    for xname in xnames:
        response = api.post("/v3/remote-build-nodes", json={"xname": xname})
        assert response.status_code == 201, response.text


def status(api: httpx.Client, xname: str | None = None) -> object:
    response = api.get("/v3/remote-build-nodes/status" + (f"/{xname}" if xname else ""))
    assert response.status_code == 200, response.text
    return response.json()


def test_node_key_from_api_cli_and_data_dir(api: httpx.Client, server: ImsServer) -> None:
    line = api.get("/v3/remote-build-nodes/public-key").json()["public_key"]
    assert line.startswith("ssh-ed25519 ") and "ims@" in line
    assert (server.data_dir / "ssh" / "ims_remote_node_ed25519.pub").read_text().strip() == line
    assert (server.data_dir / "ssh" / "ims_remote_node_ed25519").stat().st_mode & 0o077 == 0
    cli = subprocess.run(
        [sys.executable, "-m", "ims", "remote-build-nodes", "public-key", "--api-url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == line


def test_status_comes_from_a_real_probe(api: httpx.Client, nodes: TestNodes) -> None:
    node = nodes.nodes[0]
    register(api, node.address)
    found = status(api, node.address)
    assert isinstance(found, dict) and set(found) == STATUS_FIELDS
    assert found["sshStatus"] == "SSH connection established."
    assert found["nodeArch"] == os.uname().machine
    assert found["numCurrentJobs"] == 0
    assert found["ableToRunJobs"] is True
    assert str(found["podmanStatus"]).startswith("Job tools present: python3 3.")
    # A job directory on the node (the original's convention) counts; the node's /tmp is its own.
    made = node.run(["mkdir", "/tmp/ims_00000000-0000-0000-0000-000000000001"])
    assert made.returncode == 0, made.stderr
    assert not Path("/tmp/ims_00000000-0000-0000-0000-000000000001").exists()
    time.sleep(1.1)  # past the status cache
    assert status(api, node.address)["numCurrentJobs"] == 1  # type: ignore[index]
    node.run(["rmdir", "/tmp/ims_00000000-0000-0000-0000-000000000001"])
    assert status(api) == [status(api, node.address)]


def _timed_status(api: httpx.Client) -> tuple[float, list[dict[str, object]]]:
    time.sleep(1.1)  # past the status cache: a real probe of every node
    start = time.monotonic()
    found = status(api)
    assert isinstance(found, list)
    return time.monotonic() - start, found


def test_ten_nodes_three_unreachable_answer_within_the_timeout(api: httpx.Client, nodes: TestNodes) -> None:
    reachable = [node.address for node in nodes.nodes]
    dead = [nodes.unreachable_address(index) for index in range(3)]
    register(api, reachable[0])
    one, _ = _timed_status(api)
    register(api, *reachable[1:3])
    three, _ = _timed_status(api)
    register(api, *reachable[3:], *dead)

    # While the probes wait on the dead nodes, the API's worker threads stay free for everyone else.
    other: list[float] = []

    def read_other() -> None:
        time.sleep(0.5)
        started = time.monotonic()
        for _ in range(20):
            assert api.get("/v3/public-keys").status_code == 200
        other.append(time.monotonic() - started)

    reader = threading.Thread(target=read_other)
    reader.start()
    ten, found = _timed_status(api)
    reader.join()
    print(
        f"TIMING remote_status: 1 node {one:.2f} s, 3 nodes {three:.2f} s, 10 nodes (3 unreachable) {ten:.2f} s; "
        f"20 GETs meanwhile {other[0]:.2f} s"
    )
    assert ten < PROBE_TIMEOUT + 2.0
    assert other[0] < PROBE_TIMEOUT
    by_name = {entry["xname"]: entry for entry in found}
    assert set(by_name) == set(reachable + dead)
    for xname in reachable:
        assert by_name[xname]["ableToRunJobs"] is True, by_name[xname]
    for xname in dead:
        entry = by_name[xname]
        assert str(entry["sshStatus"]).startswith("Unable to connect to node. Error: "), entry
        assert entry["numCurrentJobs"] == -1 and entry["ableToRunJobs"] is False
        assert entry["nodeArch"] == "Unknown"


def test_changed_host_key_is_refused_until_registered_again(api: httpx.Client, nodes: TestNodes) -> None:
    node = nodes.nodes[2]
    register(api, node.address)
    assert status(api, node.address)["ableToRunJobs"] is True  # type: ignore[index]  # first use: trusted
    node.new_host_key()
    time.sleep(1.1)
    refused = status(api, node.address)
    assert isinstance(refused, dict)
    assert refused["ableToRunJobs"] is False
    assert "host key" in refused["sshStatus"] and "changed" in refused["sshStatus"], refused
    assert "register it again" in refused["sshStatus"]
    time.sleep(1.1)
    assert status(api, node.address)["ableToRunJobs"] is False  # type: ignore[index]  # stays refused
    register(api, node.address)  # the admin says the new key is right
    assert status(api, node.address)["ableToRunJobs"] is True  # type: ignore[index]


@pytest.mark.parametrize("xname", ["bad_name", "-x3000", "a..b", "x" * 300])
def test_an_xname_that_is_no_host_is_422(api: httpx.Client, xname: str) -> None:
    response = api.get(f"/v3/remote-build-nodes/status/{xname}")
    assert response.status_code == 422, response.text
    assert "xname" in response.json().get("errors", {}), response.text
    assert api.post("/v3/remote-build-nodes", json={"xname": xname}).status_code in (400, 422)


def test_an_unknown_xname_is_404(api: httpx.Client) -> None:
    assert_problem(api.get("/v3/remote-build-nodes/status/x3000c0s9b0n9"), 404, NOT_FOUND)
    assert_problem(api.get("/v3/remote-build-nodes/status/10.213.250.250"), 404, NOT_FOUND)


def test_register_rule_for_xname(api: httpx.Client) -> None:
    assert_invalid(api.post("/v3/remote-build-nodes", json={"xname": ""}), {"xname": ["name field must not be blank"]})


# --- selection at POST /jobs
@pytest.fixture
def image_and_key(api: httpx.Client, stored_image: RegisteredImage, job_key: KeyPair) -> tuple[str, str]:
    return add_image(api, stored_image), add_public_key(api, job_key)


def _post(api: httpx.Client, image_id: str, key_id: str) -> dict[str, object]:
    body = {
        "job_type": "customize",
        "artifact_id": image_id,
        "public_key_id": key_id,
        "image_root_archive_name": "burst",
        "ssh_containers": [{"name": "s", "jail": False}],
    }
    response = api.post("/v3/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_burst_of_ten_jobs_spreads_five_and_five(
    api: httpx.Client, nodes: TestNodes, image_and_key: tuple[str, str]
) -> None:
    first, second = nodes.nodes[0].address, nodes.nodes[1].address
    register(api, first, second)
    records: list[dict[str, object]] = []
    lock = threading.Lock()

    def post() -> None:
        record = _post(api, *image_and_key)
        with lock:
            records.append(record)

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    placed = Counter(str(record["remote_build_node"]) for record in records)
    assert placed == {first: 5, second: 5}, placed
    for record in records:
        info = record["ssh_containers"][0]["connection_info"]  # type: ignore[index]
        assert info["customer_access"]["host"] == record["remote_build_node"]
        assert info["cluster.local"]["host"] == record["remote_build_node"]
        assert 20000 <= info["customer_access"]["port"] <= 20999
    ports = [record["ssh_containers"][0]["connection_info"]["customer_access"]["port"] for record in records]  # type: ignore[index]
    assert len(set(ports)) == 10


def test_no_fitting_node_runs_the_job_here(
    api: httpx.Client,
    nodes: TestNodes,
    stored_image: RegisteredImage,
    job_key: KeyPair,
    artifact_store: ArtifactStore,
    base_image: LocalImage,
) -> None:
    key_id = add_public_key(api, job_key)
    register(api, nodes.nodes[0].address, nodes.unreachable_address(5))
    aarch64 = add_image(api, stored_image, arch="aarch64")
    # No aarch64 node: an x86_64 node that runs aarch64 through qemu (the test nodes share this host's
    # binfmt_misc), else this host, emulated too.
    emulating = (
        Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text().startswith("enabled")
        if Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()
        else False
    )
    record = _post(api, aarch64, key_id)
    assert record["remote_build_node"] == (nodes.nodes[0].address if emulating else "")
    # The unreachable node is skipped; the reachable one of the right arch takes the x86_64 job.
    x86 = add_image(api, register_in_s3(artifact_store, base_image.root, base_image.archive))
    assert _post(api, x86, key_id)["remote_build_node"] == nodes.nodes[0].address
    api.delete(f"/v3/remote-build-nodes/{nodes.nodes[0].address}")
    # No node left that fits: both jobs run on this host.
    assert _post(api, x86, key_id)["remote_build_node"] == ""
    local = _post(api, aarch64, key_id)
    assert local["remote_build_node"] == ""
    assert local["ssh_containers"][0]["connection_info"]["customer_access"]["host"] == "127.0.0.1"  # type: ignore[index]

"""Jobs that really run on remote build nodes (network namespaces with their own sshd, tests/support/netns.py).

IMS and S3 listen on the host side of the nodes' bridge, so a node reaches them as a real node would
reach IMS's and S3's addresses; the node gets only the job's token and presigned URLs. IMS's node key
is given by IMS_REMOTE_NODE_KEY here (the other tests let IMS make its own).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.jobs.kit import (
    FAST_STAGES,
    add_image,
    add_public_key,
    logs,
    post_customize,
    processes_of,
    ssh_ok,
    ssh_signal,
    stage_pid,
    wait_status,
)
from tests.stages.kit import KeyPair, LocalImage, make_keypair
from tests.support.images import md5_of, read_from_squashfs, register_in_s3
from tests.support.netns import ArchiveProxy, TestNode, TestNodes, start_ims_at, stop_ims_keeping_jobs
from tests.support.servers import ImsServer

import ims
from ims.artifacts.s3 import ArtifactStore
from ims.client.http import ImsClient
from ims.client.recipes import upload_recipe
from ims.client.resources import Ims
from ims.domain.links import S3Location
from ims.embedded.seaweedfs import SeaweedFS
from ims.stages.apt_sources import debian_archive_uri

RECIPES = Path(ims.__file__).parent / "recipes"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces, sshd and jobs need root"),
]

LOST_SECONDS = 15
KIWI = Path(sys.executable).parent / "kiwi-ng"
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def node_key(work_root: Path) -> KeyPair:
    return make_keypair(work_root / f"remote-node-key-{uuid.uuid4().hex[:6]}", "ims_node")


@pytest.fixture(scope="module")
def nodes(node_key: KeyPair) -> Iterator[TestNodes]:
    group = TestNodes.start(2, node_key.public)  # the nodes' own python3 (the system's) runs the jobs
    yield group
    group.stop()


@pytest.fixture(scope="module")
def node_s3(work_root: Path, nodes: TestNodes) -> Iterator[SeaweedFS]:
    server = SeaweedFS(work_root / f"seaweedfs-remote-{nodes.tag}", address=nodes.host_address)
    server.start()
    ArtifactStore(server.s3_config()).ensure_buckets(["ims", "boot-images"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(node_s3: SeaweedFS) -> ArtifactStore:
    return ArtifactStore(node_s3.s3_config())


@pytest.fixture(scope="module")
def data_dir(work_root: Path) -> Path:
    return work_root / f"ims-remote-jobs-{uuid.uuid4().hex[:6]}"


def _server_env(node_s3: SeaweedFS, node_key: KeyPair) -> dict[str, str]:
    config = node_s3.s3_config()
    return {
        **FAST_STAGES,
        "S3_ENDPOINT": config.endpoint,
        "S3_ACCESS_KEY": config.access_key,
        "S3_SECRET_KEY": config.secret_key,
        "IMS_REMOTE_NODE_KEY": str(node_key.private),
        "IMS_REMOTE_LOST_SECONDS": str(LOST_SECONDS),
        "IMS_REMOTE_STATUS_CACHE_SECONDS": "1",
        "IMS_JOB_HEARTBEAT_TIMEOUT": "6",
        "IMS_KIWI_NG": str(KIWI),
        # Listening on the bridge to the test nodes only (no route leads there from elsewhere).
        "IMS_AUTH": "none",
    }


@pytest.fixture(scope="module")
def server(nodes: TestNodes, node_s3: SeaweedFS, node_key: KeyPair, data_dir: Path) -> Iterator[dict[str, Any]]:
    holder = {"server": start_ims_at(nodes.host_address, data_dir, _server_env(node_s3, node_key))}
    yield holder
    current: ImsServer = holder["server"]
    current.stop()


@pytest.fixture
def api(server: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server["server"].url, timeout=60) as client:
        yield client
        for node in client.get("/v3/remote-build-nodes").json():
            client.delete(f"/v3/remote-build-nodes/{node['xname']}")


@pytest.fixture
def image_id(api: httpx.Client, store: ArtifactStore, base_image: LocalImage) -> str:
    return add_image(api, register_in_s3(store, base_image.root, base_image.archive))


@pytest.fixture
def key_id(api: httpx.Client, job_key: KeyPair) -> str:
    return add_public_key(api, job_key)


def register(api: httpx.Client, node: TestNode) -> None:
    assert api.post("/v3/remote-build-nodes", json={"xname": node.address}).status_code == 201


def on_node(node: TestNode, job_id: str) -> bool:
    """Whether the job's directory exists in the node's own /tmp."""
    return node.run(["test", "-e", f"/tmp/ims_{job_id}"]).returncode == 0


def wait_until(check: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


def read_image_file(api: httpx.Client, store: ArtifactStore, image_id: str, member: str, scratch: Path) -> bytes:
    image = api.get(f"/v3/images/{image_id}").json()
    manifest = store.read_json(S3Location.parse(image["link"]["path"]))
    for artifact in manifest["artifacts"]:
        if artifact["type"].startswith("application/vnd.cray.image.rootfs.squashfs"):
            rootfs = scratch / "rootfs.sqsh"
            store.download_file(S3Location.parse(artifact["link"]["path"]), rootfs)
            assert md5_of(rootfs) == artifact["md5"]
            return read_from_squashfs(rootfs, member, scratch)
    raise AssertionError(f"no rootfs in {manifest}")


def _customize(api: httpx.Client, key: KeyPair, image_id: str, key_id: str, where: str, text: str) -> dict[str, Any]:
    start = time.monotonic()
    job = post_customize(api, image_id, key_id, jail=True)
    waiting = wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
    TIMINGS[f"{where}_post_to_waiting"] = time.monotonic() - start
    seen = ssh_signal(api, key, waiting, f"echo {text} > /etc/motd && uname -m && touch /tmp/complete")
    assert os.uname().machine in seen
    signalled = time.monotonic()
    done = wait_status(api, job["id"], {"success"}, timeout=120)
    TIMINGS[f"{where}_complete_to_success"] = time.monotonic() - signalled
    return done


def test_customize_on_a_node_end_to_end(
    api: httpx.Client,
    nodes: TestNodes,
    store: ArtifactStore,
    job_key: KeyPair,
    image_id: str,
    key_id: str,
    tmp_path: Path,
    base_image: LocalImage,
) -> None:
    node = nodes.nodes[0]
    register(api, node)
    start = time.monotonic()
    job = post_customize(api, image_id, key_id, jail=True)
    assert job["remote_build_node"] == node.address
    assert job["ssh_containers"][0]["connection_info"]["customer_access"]["host"] == node.address
    waiting = wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
    TIMINGS["node_post_to_waiting"] = time.monotonic() - start
    assert waiting["ssh_containers"][0]["connection_info"]["customer_access"]["host"] == node.address
    # The job lives in the node's /tmp/ims_<job_id>, not on the IMS host.
    assert on_node(node, job["id"])
    assert not Path(f"/tmp/ims_{job['id']}").exists()
    assert node.run(["ls", "/tmp"]).stdout.split() == [f"ims_{job['id']}"]
    # Its environment holds the job's token and presigned URLs, never S3 or admin credentials.
    environ = Path(f"/proc/{stage_pid(job['id'])}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if b"=" in entry}
    assert "IMS_JOB_TOKEN" in names and "DOWNLOAD_URL" in names
    assert not names & {"S3_ACCESS_KEY", "S3_SECRET_KEY", "IMS_API_TOKEN"}
    assert ssh_ok(api, job_key, waiting, "cat /etc/os-release").count('VERSION_ID="base"') == 1
    ssh_signal(api, job_key, waiting, "echo changed-on-a-node > /etc/motd && touch /tmp/complete")
    signalled = time.monotonic()
    done = wait_status(api, job["id"], {"success"}, timeout=120)
    TIMINGS["node_complete_to_success"] = time.monotonic() - signalled
    assert read_image_file(api, store, done["resultant_image_id"], "etc/motd", tmp_path) == b"changed-on-a-node\n"
    wait_until(lambda: not on_node(node, job["id"]), 30, "the node's job directory removed")
    text = logs(api, job["id"])
    assert f"on node {node.address}" in text and "waiting_on_user" in text

    # Again on the node, now that the job code bundle exists (the first remote job of a server makes it).
    warm_image = add_image(api, register_in_s3(store, base_image.root, base_image.archive))
    assert _customize(api, job_key, warm_image, key_id, "node_warm", "again")["remote_build_node"] == node.address

    # The same job on the IMS host, for comparison (no node registered: it runs here).
    api.delete(f"/v3/remote-build-nodes/{node.address}")
    local_image = add_image(api, register_in_s3(store, base_image.root, base_image.archive))
    local = _customize(api, job_key, local_image, key_id, "local", "changed-here")
    assert local["remote_build_node"] == ""
    print(
        "TIMING remote_customize: node POST->waiting_on_user {node_post_to_waiting:.2f} s (first remote job), "
        "complete->success {node_complete_to_success:.2f} s; node again {node_warm_post_to_waiting:.2f} s, "
        "{node_warm_complete_to_success:.2f} s; local {local_post_to_waiting:.2f} s, "
        "{local_complete_to_success:.2f} s".format(**TIMINGS)
    )


def test_stage_killed_on_the_node_ends_in_error_and_cleans(
    api: httpx.Client, nodes: TestNodes, job_key: KeyPair, image_id: str, key_id: str
) -> None:
    node = nodes.nodes[1]
    register(api, node)
    job = post_customize(api, image_id, key_id)
    assert job["remote_build_node"] == node.address
    wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
    os.kill(stage_pid(job["id"]), signal.SIGKILL)
    killed = time.monotonic()
    record = wait_status(api, job["id"], {"error"}, timeout=60)
    took = time.monotonic() - killed
    assert took <= 60
    assert "killed by SIGKILL" in record["status_reason"] or "exited" in record["status_reason"], record
    wait_until(lambda: not on_node(node, job["id"]) and not processes_of(job["id"]), 30, "the node cleaned up")
    print(f"TIMING remote_stage_killed_to_error: {took:.2f} s")


def test_node_sshd_killed_ends_in_error_and_the_node_cleans_itself(
    api: httpx.Client, nodes: TestNodes, job_key: KeyPair, image_id: str, key_id: str
) -> None:
    node = nodes.nodes[1]
    register(api, node)
    job = post_customize(api, image_id, key_id)
    assert job["remote_build_node"] == node.address
    wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
    node.stop_sshd()  # IMS can no longer reach the node; the job itself runs on
    try:
        killed = time.monotonic()
        record = wait_status(api, job["id"], {"error"}, timeout=60)
        took = time.monotonic() - killed
        assert "could not be reached" in record["status_reason"], record
        assert node.address in record["status_reason"]
        # Nobody polls the node any more: after 2 x IMS_REMOTE_LOST_SECONDS it stops the job and removes it.
        gone = wait_until(lambda: not processes_of(job["id"]), 4 * LOST_SECONDS, "the job's processes gone")
        print(f"TIMING remote_sshd_killed_to_error: {took:.2f} s; node cleaned itself {gone:.0f} s later")
    finally:
        node.start_sshd()


def test_delete_and_patch_stop_the_job_on_the_node(
    api: httpx.Client,
    nodes: TestNodes,
    store: ArtifactStore,
    base_image: LocalImage,
    job_key: KeyPair,
    image_id: str,
    key_id: str,
) -> None:
    node = nodes.nodes[0]
    register(api, node)
    deleted = post_customize(api, image_id, key_id)
    other = add_image(api, register_in_s3(store, base_image.root, base_image.archive))
    patched = post_customize(api, other, key_id)
    for job in (deleted, patched):
        assert job["remote_build_node"] == node.address
        wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
        assert on_node(node, job["id"])
    assert api.delete(f"/v3/jobs/{deleted['id']}").status_code == 204
    response = api.patch(f"/v3/jobs/{patched['id']}", json={"status": "error", "status_reason": "given up"})
    assert response.status_code == 200, response.text
    for job in (deleted, patched):
        wait_until(
            lambda job=job: not on_node(node, job["id"]) and not processes_of(job["id"]),
            60,
            f"job {job['id']} stopped and removed on the node",
        )
    assert api.get(f"/v3/jobs/{deleted['id']}").status_code == 404
    assert api.get(f"/v3/jobs/{patched['id']}").json()["status"] == "error"


def test_restart_of_ims_adopts_the_remote_job(
    server: dict[str, Any],
    nodes: TestNodes,
    node_s3: SeaweedFS,
    node_key: KeyPair,
    data_dir: Path,
    store: ArtifactStore,
    job_key: KeyPair,
    image_id: str,
    key_id: str,
    tmp_path: Path,
) -> None:
    node = nodes.nodes[0]
    current: ImsServer = server["server"]
    with httpx.Client(base_url=current.url, timeout=60) as api:
        register(api, node)
        job = post_customize(api, image_id, key_id, jail=True)
        waiting = wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
    port = int(current.url.rsplit(":", 1)[1])
    stop_ims_keeping_jobs(current)
    assert on_node(node, job["id"]) and processes_of(job["id"])
    time.sleep(2)
    server["server"] = start_ims_at(nodes.host_address, data_dir, _server_env(node_s3, node_key), port=port)
    with httpx.Client(base_url=server["server"].url, timeout=60) as api:
        wait_until(lambda: "adopted the job" in logs(api, job["id"]), 60, "the job adopted")
        assert api.get(f"/v3/jobs/{job['id']}").json()["status"] == "waiting_on_user"
        ssh_signal(api, job_key, waiting, "echo after-restart > /etc/motd && touch /tmp/complete")
        done = wait_status(api, job["id"], {"success"}, timeout=120)
        assert read_image_file(api, store, done["resultant_image_id"], "etc/motd", tmp_path) == b"after-restart\n"
        wait_until(lambda: not on_node(node, job["id"]), 30, "the node's job directory removed")


def test_deleting_a_node_that_runs_a_job_lets_the_job_finish(
    api: httpx.Client,
    nodes: TestNodes,
    store: ArtifactStore,
    job_key: KeyPair,
    image_id: str,
    key_id: str,
    tmp_path: Path,
) -> None:
    node = nodes.nodes[1]
    register(api, node)
    job = post_customize(api, image_id, key_id, jail=True)
    assert job["remote_build_node"] == node.address
    waiting = wait_status(api, job["id"], {"waiting_on_user"}, timeout=120)
    assert api.delete(f"/v3/remote-build-nodes/{node.address}").status_code == 204
    assert api.get("/v3/remote-build-nodes/status").json() == []
    # No new job goes there ...
    assert post_customize(api, image_id, key_id)["remote_build_node"] == ""
    # ... while the running one is still watched, and ends normally.
    ssh_signal(api, job_key, waiting, "echo node-deleted > /etc/motd && touch /tmp/complete")
    done = wait_status(api, job["id"], {"success"}, timeout=120)
    assert read_image_file(api, store, done["resultant_image_id"], "etc/motd", tmp_path) == b"node-deleted\n"
    wait_until(lambda: not on_node(node, job["id"]), 30, "the node's job directory removed")


# One real kiwi build on a node (about two minutes unloaded).
def test_create_on_a_node(
    api: httpx.Client,
    nodes: TestNodes,
    node_key: KeyPair,
    store: ArtifactStore,
    job_key: KeyPair,
    key_id: str,
    request: pytest.FixtureRequest,
) -> None:
    # A node with kiwi-ng on its PATH: this host's files are the node's (but /tmp), and kiwi-ng lives in a
    # virtualenv (IMS's own here), as pip installs it on a node; python3 stays the system's.
    node_bin = Path("/run") / f"ims-test-node-bin-{uuid.uuid4().hex[:8]}"
    node_bin.mkdir(mode=0o755)
    request.addfinalizer(lambda: shutil.rmtree(node_bin, ignore_errors=True))
    (node_bin / "kiwi-ng").symlink_to(KIWI)
    builder = TestNodes.start(1, node_key.public, path=f"{node_bin}:{STANDARD_PATH}")
    request.addfinalizer(builder.stop)
    node = builder.nodes[0]
    register(api, node)
    assert "kiwi-ng" in api.get(f"/v3/remote-build-nodes/status/{node.address}").json()["podmanStatus"]
    # The nodes have no route out: their archive is this machine's, through a proxy on the bridge.
    proxy = ArchiveProxy(builder.host_address, debian_archive_uri())
    request.addfinalizer(proxy.stop)
    with Ims(ImsClient(str(api.base_url))) as client:
        recipe = upload_recipe(
            client,
            store,
            name=f"tbz-{uuid.uuid4().hex[:6]}",
            source=RECIPES / "debian-bookworm-tbz",
            linux_distribution="debian12",
            recipe_type="kiwi-ng",
            template_dictionary={"debian_mirror": proxy.url},
        ).recipe
    body = {
        "job_type": "create",
        "artifact_id": recipe["id"],
        "public_key_id": key_id,
        "image_root_archive_name": f"created-{uuid.uuid4().hex[:6]}",
    }
    start = time.monotonic()
    response = api.post("/v3/jobs", json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["remote_build_node"] == node.address
    done = wait_status(api, job["id"], {"success"}, timeout=3000)
    took = time.monotonic() - start
    image = api.get(f"/v3/images/{done['resultant_image_id']}").json()
    manifest = store.read_json(S3Location.parse(image["link"]["path"]))
    kinds = {artifact["type"].split(";")[0] for artifact in manifest["artifacts"]}
    assert {"application/vnd.cray.image.kernel", "application/vnd.cray.image.initrd"} <= kinds, kinds
    assert any(kind.startswith("application/vnd.cray.image.rootfs.squashfs") for kind in kinds), kinds
    for artifact in manifest["artifacts"]:
        assert store.head(S3Location.parse(artifact["link"]["path"])) is not None
    assert f"on node {node.address}" in logs(api, job["id"])
    wait_until(lambda: not on_node(node, job["id"]), 60, "the node's job directory removed")
    print(f"TIMING remote_create (tbz recipe, on a node): POST->success {took:.0f} s")

"""Job liveness and ownership, for real: restarts of IMS, stand-alone workers, the user wait limit, logs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.jobs.kit import (
    add_image,
    add_public_key,
    delete_all_jobs,
    launcher_pid,
    logs,
    post_customize,
    processes_of,
    ssh_signal,
    stage_pid,
    start_job_server,
    wait_status,
)
from tests.stages.kit import KeyPair, LocalImage, wait_for
from tests.support.images import register_in_s3
from tests.support.servers import ImsServer, PostgresCluster

from ims.artifacts.s3 import ArtifactStore

pytestmark = pytest.mark.slow


def _port(server: ImsServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _sigterm(server: ImsServer) -> None:
    """Stop the server as systemd would (ImsServer.stop() would delete the jobs first)."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGTERM)
    server.process.wait(20)


def _crash(server: ImsServer) -> None:
    """SIGKILL the server process alone: no shutdown code runs, its jobs' processes live on.

    Its server processes end with it (they get SIGTERM when their supervisor dies), but they may take a
    moment to let go of the port on a busy machine: a new server started before that would find its
    port taken while the readiness check still reached the old one.
    """
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    wait_for(lambda: not _listening(_port(server)), 60, "the crashed server's processes to free the port")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


NewJob = Callable[..., dict[str, Any]]


@pytest.fixture
def new_job(artifact_store: ArtifactStore, base_image: LocalImage, job_key: KeyPair) -> NewJob:
    """Post a customize job of a fresh copy of the test image, with the session's key, to a server."""
    keys: dict[str, str] = {}

    def make(api: httpx.Client, jail: bool = True) -> dict[str, Any]:
        url = str(api.base_url)
        if url not in keys:
            keys[url] = add_public_key(api, job_key)
        image_id = add_image(api, register_in_s3(artifact_store, base_image.root, base_image.archive))
        return post_customize(api, image_id, keys[url], jail=jail)

    return make


@pytest.fixture
def servers() -> Iterator[list[ImsServer]]:
    started: list[ImsServer] = []
    yield started
    for server in reversed(started):
        try:
            if server.process is not None and server.process.poll() is None:
                delete_all_jobs(server)
        finally:  # a server that stopped answering is stopped all the same, not left running
            server.stop()


@pytest.mark.parametrize("how", ["crash", "stop"])
def test_a_restarted_ims_adopts_its_running_job(
    work_root: Path,
    s3_env: dict[str, str],
    job_key: KeyPair,
    servers: list[ImsServer],
    new_job: NewJob,
    how: str,
) -> None:
    # A long lease: adoption must come from seeing the old server's pid gone, not from the lease running out.
    first = start_job_server(work_root, s3_env, IMS_JOB_HEARTBEAT_TIMEOUT="300")
    servers.append(first)
    with httpx.Client(base_url=first.url, timeout=30) as api:
        job = new_job(api)
        waiting = wait_status(api, job["id"], {"waiting_on_user"})
    stage = stage_pid(job["id"])
    _crash(first) if how == "crash" else _sigterm(first)
    assert stage in processes_of(job["id"])  # the job outlives its server

    second = start_job_server(
        work_root, s3_env, data_dir=first.data_dir, port=_port(first), IMS_JOB_HEARTBEAT_TIMEOUT="300"
    )
    servers.append(second)
    with httpx.Client(base_url=second.url, timeout=30) as api:
        wait_for(lambda: "adopted the job" in logs(api, job["id"]), 20, "the new server to adopt the job")
        ssh_signal(api, job_key, waiting, "echo after-restart > /etc/motd && touch /tmp/complete")
        done = wait_status(api, job["id"], {"success"})
        assert done["resultant_image_id"]


def test_a_job_that_died_while_ims_was_down_ends_in_error(
    work_root: Path,
    s3_env: dict[str, str],
    servers: list[ImsServer],
    new_job: NewJob,
) -> None:
    first = start_job_server(work_root, s3_env, IMS_JOB_HEARTBEAT_TIMEOUT="300")
    servers.append(first)
    with httpx.Client(base_url=first.url, timeout=30) as api:
        job = new_job(api)
        wait_status(api, job["id"], {"waiting_on_user"})
    _crash(first)
    os.kill(launcher_pid(job["id"]), signal.SIGKILL)  # init dies with it, and the namespace with init
    wait_for(lambda: not processes_of(job["id"]), 20, "the job's processes to end")

    second = start_job_server(work_root, s3_env, data_dir=first.data_dir, port=_port(first))
    servers.append(second)
    with httpx.Client(base_url=second.url, timeout=30) as api:
        ended = wait_status(api, job["id"], {"error"}, timeout=20)
        assert "ended while no worker watched it" in ended["status_reason"]
        image_dir = first.data_dir / "jobs" / job["id"] / "image"
        wait_for(lambda: not image_dir.exists(), 20, "the work directory to be removed")


def test_the_user_wait_limit_ends_a_job(
    work_root: Path,
    s3_env: dict[str, str],
    servers: list[ImsServer],
    new_job: NewJob,
) -> None:
    server = start_job_server(work_root, s3_env, IMS_JOB_USER_WAIT_LIMIT="3")
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=30) as api:
        job = new_job(api)
        wait_status(api, job["id"], {"waiting_on_user"})
        ended = wait_status(api, job["id"], {"error"}, timeout=30)
        assert "no complete or failed signal within 3 s" in ended["status_reason"]

        # A stage that hangs (SIGSTOP) cannot end itself: the reconciler does, and its worker stops it.
        job = new_job(api, jail=False)
        wait_status(api, job["id"], {"waiting_on_user"})
        os.kill(stage_pid(job["id"]), signal.SIGSTOP)
        ended = wait_status(api, job["id"], {"error"}, timeout=30)
        assert "IMS_JOB_USER_WAIT_LIMIT" in ended["status_reason"]
        wait_for(lambda: not processes_of(job["id"]), 40, "the frozen job to be stopped")


def _start_worker(server: ImsServer) -> subprocess.Popen[bytes]:
    env = dict(server.env, IMS_API_URL=server.url)
    log = (server.data_dir / f"worker-{time.monotonic_ns()}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "ims", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def test_stand_alone_workers_share_the_jobs_and_never_run_one_twice(
    work_root: Path,
    s3_env: dict[str, str],
    job_key: KeyPair,
    servers: list[ImsServer],
    new_job: NewJob,
) -> None:
    server = start_job_server(work_root, s3_env, IMS_RUN_WORKERS="false")
    servers.append(server)
    workers = [_start_worker(server) for _ in range(3)]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            jobs = [new_job(api) for _ in range(4)]
            ready = [wait_status(api, job["id"], {"waiting_on_user"}, timeout=120) for job in jobs]
            launchers = set()
            for job in ready:
                text = logs(api, job["id"])
                assert text.count("launched the job") == 1, text
                launchers.add(text.split("worker ", 1)[1].split(" launched", 1)[0])
            for job in ready:
                ssh_signal(api, job_key, job, "touch /tmp/complete")
            for job in ready:
                assert wait_status(api, job["id"], {"success"})["resultant_image_id"]
            print(f"jobs launched by {len(launchers)} of 3 workers")
            assert jobs_api_ok(api)
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(20)


def jobs_api_ok(api: httpx.Client) -> bool:
    return api.get("/v3/jobs").status_code == 200


def test_following_the_log_ends_with_the_job(
    work_root: Path,
    s3_env: dict[str, str],
    job_key: KeyPair,
    servers: list[ImsServer],
    new_job: NewJob,
) -> None:
    server = start_job_server(work_root, s3_env)
    servers.append(server)
    with httpx.Client(base_url=server.url, timeout=60) as api:
        job = new_job(api)
        chunks: list[str] = []
        content_types: list[str] = []

        def follow() -> None:
            with api.stream("GET", f"/v3/jobs/{job['id']}/logs", params={"follow": "true"}) as response:
                content_types.append(response.headers["content-type"])
                for text in response.iter_text():
                    chunks.append(text)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        waiting = wait_status(api, job["id"], {"waiting_on_user"})
        wait_for(lambda: "waiting_on_user" in "".join(chunks), 10, "the log to stream while the job runs")
        assert reader.is_alive()
        ssh_signal(api, job_key, waiting, "touch /tmp/complete")
        wait_status(api, job["id"], {"success"})
        reader.join(30)
        assert not reader.is_alive(), "the followed log did not end with the job"
        text = "".join(chunks)
        assert content_types == ["text/plain; charset=utf-8"]
        assert "job status -> success" in text and "the job's process exited with status 0" in text
        assert api.get(f"/v3/jobs/{job['id']}/logs").text == text
        assert api.get("/v3/jobs/00000000-0000-4000-8000-000000000000/logs").status_code == 404


@pytest.mark.postgres
def test_jobs_on_postgresql(
    work_root: Path,
    s3_env: dict[str, str],
    job_key: KeyPair,
    servers: list[ImsServer],
    new_job: NewJob,
    postgres: PostgresCluster,
) -> None:
    url = postgres.create_database(f"jobs_{uuid.uuid4().hex[:8]}")
    server = start_job_server(work_root, s3_env, IMS_DATABASE_URL=url)
    servers.append(server)
    worker = _start_worker(server)  # a second claimer on the same rows
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            jobs = [new_job(api) for _ in range(3)]
            for job in jobs:
                waiting = wait_status(api, job["id"], {"waiting_on_user"})
                assert logs(api, job["id"]).count("launched the job") == 1
                ssh_signal(api, job_key, waiting, "touch /tmp/complete")
            for job in jobs:
                assert wait_status(api, job["id"], {"success"})["resultant_image_id"]
            assert_gone = api.delete("/v3/jobs", params={"status": "success"})
            assert assert_gone.status_code == 204 and api.get("/v3/jobs").json() == []
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)

"""Helpers for the job tests: a server whose jobs really run, images and keys registered through the API."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from tests.stages.kit import KeyPair, ssh
from tests.support.images import RegisteredImage
from tests.support.servers import ImsServer, start_ims_server

FAST_STAGES = {
    "IMS_POLL_SECONDS": "0.2",
    "IMS_DOWNLOAD_RETRY_SECONDS": "0.2",
    "IMS_DOWNLOAD_ATTEMPTS": "3",
    "IMS_TASK_POLL_SECONDS": "0.2",
}


def start_job_server(
    work_root: Path, s3_env: dict[str, str], *, data_dir: Path | None = None, port: int | None = None, **extra: str
) -> ImsServer:
    """An IMS with fast stage polling; `data_dir` and `port` bring a stopped server back as it was."""
    env = dict(FAST_STAGES)
    env.update(extra)
    return start_ims_server(data_dir or work_root / f"ims-jobs-{uuid.uuid4().hex[:8]}", s3_env, env, port=port)


def jobs_dir(server: ImsServer) -> Path:
    return Path(server.env.get("IMS_JOBS_DIR") or server.data_dir / "jobs")


def add_public_key(api: httpx.Client, key: KeyPair) -> str:
    response = api.post("/v3/public-keys", json={"name": f"key-{uuid.uuid4().hex[:6]}", "public_key": key.public})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def add_image(api: httpx.Client, image: RegisteredImage, arch: str = "x86_64") -> str:
    response = api.post("/v3/images", json={"name": "base", "link": image.manifest_link, "arch": arch})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def post_customize(
    api: httpx.Client, image_id: str, key_id: str, *, jail: bool = False, **extra: Any
) -> dict[str, Any]:
    body = {
        "job_type": "customize",
        "artifact_id": image_id,
        "public_key_id": key_id,
        "image_root_archive_name": f"customized-{uuid.uuid4().hex[:6]}",
        "ssh_containers": [{"name": "test", "jail": jail}],
        **extra,
    }
    response = api.post("/v3/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_status(api: httpx.Client, job_id: str, wanted: Iterable[str], timeout: float = 90.0) -> dict[str, Any]:
    """Poll the job until its status is one of `wanted`; a final status that is not wanted fails at once."""
    wanted = set(wanted)
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = api.get(f"/v3/jobs/{job_id}")
        assert response.status_code == 200, response.text
        record = response.json()
        if record["status"] in wanted:
            return record
        if record["status"] in ("success", "error"):
            raise AssertionError(f"job ended {record['status']}: {record.get('status_reason')}\n{logs(api, job_id)}")
        time.sleep(0.1)
    raise AssertionError(f"job still {record.get('status')} after {timeout}s\n{logs(api, job_id)}")


def wait_gone(api: httpx.Client, job_id: str, path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get(f"/v3/jobs/{job_id}").status_code == 404 and not path.exists():
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} or {path} still there after {timeout}s")


def logs(api: httpx.Client, job_id: str) -> str:
    response = api.get(f"/v3/jobs/{job_id}/logs")
    return response.text if response.status_code == 200 else f"(no log: {response.status_code})"


def endpoint(record: dict[str, Any], network: str = "customer_access") -> tuple[str, int]:
    info = record["ssh_containers"][0]["connection_info"][network]
    return str(info["host"]), int(info["port"])


def ssh_job(key: KeyPair, record: dict[str, Any], command: str, network: str = "customer_access") -> Any:
    host, port = endpoint(record, network)
    return ssh(key, port, command, host=host)


def ssh_ok(api: httpx.Client, key: KeyPair, record: dict[str, Any], command: str) -> str:
    """Run a command over the job's SSH; fail with sshd's side of the story when it does not work."""
    result = ssh_job(key, record, command)
    assert result.returncode == 0, f"ssh: {result.returncode} {result.stderr}\n{logs(api, record['id'])}"
    return str(result.stdout)


def ssh_signal(api: httpx.Client, key: KeyPair, record: dict[str, Any], command: str) -> str:
    """Run a command that ends with writing `complete` or `failed`.

    The job's sshd stops as soon as it sees the flag, which can drop the very session that wrote it
    before its exit status arrives (the original behaves the same): that counts as done.
    """
    result = ssh_job(key, record, command)
    if result.returncode == 255 and "closed by remote host" in result.stderr:
        return str(result.stdout)
    assert result.returncode == 0, f"ssh: {result.returncode} {result.stderr}\n{logs(api, record['id'])}"
    return str(result.stdout)


def processes_of(job_id: str) -> list[int]:
    """Pids whose environment names the job (the stage and what it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"IMS_JOB_ID={job_id}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def launcher_pid(job_id: str) -> int:
    """The job's namespace launcher: the one process of the job whose parent is not part of it."""
    pids = set(processes_of(job_id))
    roots = [pid for pid in pids if _ppid(pid) not in pids]
    assert len(roots) == 1, roots
    return roots[0]


def stage_pid(job_id: str) -> int:
    """The `python -m ims.stages` process of the job."""
    for pid in processes_of(job_id):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ims.stages" in argv and b"ims.jobs.nsinit" not in argv:
            return pid
    raise AssertionError(f"no stage process for job {job_id}")


def delete_all_jobs(server: ImsServer, timeout: float = 60.0) -> None:
    """Stop every job of the server and wait until their processes and directories are gone."""
    with httpx.Client(base_url=server.url, timeout=30) as api:
        ids = [job["id"] for job in api.get("/v3/jobs").json()]
        api.delete("/v3/jobs")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(processes_of(job_id) for job_id in ids):
                return
            time.sleep(0.2)

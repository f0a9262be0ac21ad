"""Follow a job to its end: status changes by polling, the log by `GET /v3/jobs/{id}/logs?follow=true`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ims.client.http import ImsApiError
from ims.client.resources import Ims, Record
from ims.domain.jobs import FINAL_STATUSES

WAITING_ON_USER = "waiting_on_user"


@dataclass(frozen=True)
class SshAccess:
    host: str
    port: int
    jailed: bool

    @property
    def command(self) -> str:
        return f"ssh -p {self.port} root@{self.host}"

    @property
    def done_command(self) -> str:
        """What the user runs inside to let the job package the image (the original's signal files).

        Unjailed, the signal directory is `/mnt/image` in a Kubernetes job and the job directory on our
        runners; the SSH session exports it as IMAGE_ROOT_PARENT either way.
        """
        return "touch /tmp/complete" if self.jailed else 'touch "$IMAGE_ROOT_PARENT/complete"'

    @property
    def discard_command(self) -> str:
        return "touch /tmp/failed" if self.jailed else 'touch "$IMAGE_ROOT_PARENT/failed"'


def ssh_access(job: Record, network: str = "customer_access") -> SshAccess | None:
    """Where to log in to the job's first SSH container, from `ssh_containers[0].connection_info`."""
    containers = job.get("ssh_containers") or []
    if not containers or not isinstance(containers[0], dict):
        return None
    container = containers[0]
    info: dict[str, Any] = container.get("connection_info") or {}
    endpoint = info.get(network) or info.get("customer_access") or info.get("cluster.local")
    if not isinstance(endpoint, dict) or not endpoint.get("host"):
        return None
    jail = container.get("jail")
    jailed = jail is True or str(jail).lower() == "true"
    return SshAccess(str(endpoint["host"]), int(endpoint.get("port") or 22), jailed)


class _LogFollower(threading.Thread):
    def __init__(self, ims: Ims, job_id: str, on_log: Callable[[str], None]) -> None:
        super().__init__(name=f"ims-logs-{job_id}", daemon=True)
        self.ims = ims
        self.job_id = job_id
        self.on_log = on_log
        self.error: ImsApiError | None = None

    def run(self) -> None:
        try:
            for chunk in self.ims.jobs.logs(self.job_id, follow=True):
                self.on_log(chunk)
        except ImsApiError as exc:
            self.error = exc


def wait_for_job(
    ims: Ims,
    job_id: str,
    *,
    on_status: Callable[[Record], None],
    on_log: Callable[[str], None] | None = None,
    poll: float = 2.0,
    timeout: float | None = None,
    drain: float = 5.0,
) -> Record:
    """Poll until the job reaches `success` or `error`; call `on_status` on every change of status.

    With `on_log`, the job's log is streamed alongside. Once the job has ended, the log gets `drain`
    seconds to deliver its last lines.
    """
    follower = _LogFollower(ims, job_id, on_log) if on_log is not None else None
    if follower is not None:
        follower.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    last_status: str | None = None
    while True:
        job = ims.jobs.get(job_id)
        status = str(job.get("status"))
        if status != last_status:
            on_status(job)
            last_status = status
        if status in FINAL_STATUSES:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} is still {status} after {timeout:g} s")
        time.sleep(poll)
    if follower is not None:
        follower.join(drain)
    return job

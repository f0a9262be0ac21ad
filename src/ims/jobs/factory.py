"""Pick the runner IMS_JOB_RUNNER names; with a database, jobs placed on a remote build node go there.

`JobRunners` is the one Runner the worker and the API see: a job whose record names a
`remote_build_node` starts on that node (RemoteNodeRunner), every other job on this host (LocalRunner);
a handle goes back to the runner that made it. Both keep the job's log in the same local directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ims.jobs.local import LocalRunner
from ims.jobs.remote import RemoteNodeRunner
from ims.jobs.runner import Exit, JobSpec, Runner, RunnerHandle
from ims.settings import Settings
from ims.store.db import Database

RUNNERS = ("local",)


class JobRunners:
    name = "local"

    def __init__(self, local: LocalRunner, remote: RemoteNodeRunner) -> None:
        self.local = local
        self.remote = remote

    def _for(self, handle: RunnerHandle) -> Runner:
        return self.remote if handle.runner == self.remote.name else self.local

    def start(self, job: Mapping[str, Any], spec: JobSpec) -> RunnerHandle:
        if job.get("remote_build_node"):
            return self.remote.start(job, spec)
        return self.local.start(job, spec)

    def can_watch(self, handle: RunnerHandle) -> bool:
        return self._for(handle).can_watch(handle)

    def is_alive(self, handle: RunnerHandle) -> bool:
        return self._for(handle).is_alive(handle)

    def exit(self, handle: RunnerHandle) -> Exit:
        return self._for(handle).exit(handle)

    def stop(self, handle: RunnerHandle, grace: float) -> None:
        self._for(handle).stop(handle, grace)

    def cleanup(self, job_id: str, *, keep_log: bool) -> None:
        if self.remote.knows(job_id):
            self.remote.cleanup(job_id, keep_log=keep_log)
        else:
            self.local.cleanup(job_id, keep_log=keep_log)

    def log_path(self, job_id: str) -> Path:
        return self.local.log_path(job_id)

    def job_dir(self, job_id: str) -> Path:
        return self.local.job_dir(job_id)


def make_runner(settings: Settings, database: Database | None = None, *, worker: bool = False) -> Runner:
    """`worker`: for the job worker, which launches jobs (it makes the remote code bundle ahead of time)."""
    if settings.job_runner == "local":
        local = LocalRunner(settings.effective_jobs_dir)
        if database is None:
            return local
        remote = RemoteNodeRunner(settings.effective_jobs_dir, database, settings)
        if worker:
            remote.warm()
        return JobRunners(local, remote)
    raise ValueError(f"unknown IMS_JOB_RUNNER {settings.job_runner!r} (known: {', '.join(RUNNERS)})")

"""Pick the runner IMS_JOB_RUNNER names."""

from __future__ import annotations

from ims.jobs.local import LocalRunner
from ims.jobs.runner import Runner
from ims.settings import Settings

RUNNERS = ("local",)


def make_runner(settings: Settings) -> Runner:
    if settings.job_runner == "local":
        return LocalRunner(settings.effective_jobs_dir)
    raise ValueError(f"unknown IMS_JOB_RUNNER {settings.job_runner!r} (known: {', '.join(RUNNERS)})")

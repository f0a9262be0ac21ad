"""The one interface every way of running a job implements, and the handle it leaves in the job row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ims.jobs.proc import ProcessId


class RunnerError(Exception):
    """A job could not be started; the message becomes the job's status_reason."""


@dataclass(frozen=True)
class JobSpec:
    """What to run for a job. `env` carries secrets (S3 keys, a presigned URL): never log or store it."""

    job_id: str
    stage: str  # `create` or `customize`: the argument of `python -m ims.stages`
    env: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class RunnerHandle:
    """Enough to find a job's process again, from another worker or after a restart (stored as JSON)."""

    runner: str
    host: str
    pid: int
    start: int
    boot: str
    job_dir: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunnerHandle:
        return cls(
            runner=str(data["runner"]),
            host=str(data["host"]),
            pid=int(data["pid"]),
            start=int(data["start"]),
            boot=str(data["boot"]),
            job_dir=str(data["job_dir"]),
        )

    @property
    def process(self) -> ProcessId:
        return ProcessId(self.pid, self.start, self.boot)


@dataclass(frozen=True)
class Exit:
    """How a job's process ended; `code` is None when it was not our child (adopted after a restart)."""

    code: int | None

    def describe(self) -> str:
        if self.code is None:
            return "ended (its exit status is unknown: it was adopted after a restart)"
        if self.code >= 128:
            import signal

            try:
                name = signal.Signals(self.code - 128).name
            except ValueError:
                name = f"signal {self.code - 128}"
            return f"was killed by {name}"
        return f"exited with status {self.code}"


class Runner(Protocol):
    name: str

    def start(self, job: Mapping[str, Any], spec: JobSpec) -> RunnerHandle:
        """Launch the job's stages; raise RunnerError when that is impossible."""
        ...

    def can_watch(self, handle: RunnerHandle) -> bool:
        """Whether this runner, here, can tell if the handle's process lives (same host, same kind)."""
        ...

    def is_alive(self, handle: RunnerHandle) -> bool: ...

    def exit(self, handle: RunnerHandle) -> Exit:
        """How the process ended (call once it is no longer alive)."""
        ...

    def stop(self, handle: RunnerHandle, grace: float) -> None:
        """Ask the job to end (SIGTERM), then make sure (SIGKILL) after `grace` seconds."""
        ...

    def cleanup(self, job_id: str, *, keep_log: bool) -> None:
        """Remove the job's work directory (the log file too unless `keep_log`)."""
        ...

    def log_path(self, job_id: str) -> Path: ...

    def job_dir(self, job_id: str) -> Path: ...

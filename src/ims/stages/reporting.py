"""Progress lines for the job log and status updates to IMS, shared by every stage."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from ims.client.http import ImsApiError, ImsClient


class StageError(Exception):
    """A stage failed for a reason the user should read in the job status."""


class JobStopped(Exception):
    """The job's process was asked to stop (SIGTERM from the runner)."""


@dataclass
class Reporter:
    job_id: str
    client: ImsClient | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        elapsed = time.monotonic() - self.started
        print(f"{stamp} [+{elapsed:7.1f}s] {message}", file=self.out, flush=True)

    def status(self, status: str, reason: str | None = None) -> None:
        """Tell IMS; like the original, a failed update is logged and the job goes on."""
        self.say(f"job status -> {status}" + (f" ({reason})" if reason else ""))
        if self.client is None:
            return
        try:
            self.client.set_job_status(self.job_id, status, reason)
        except ImsApiError as exc:
            self.say(f"warning: could not set job status {status}: {exc}")

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        self.say(f"{what} ...")
        start = time.monotonic()
        yield
        self.say(f"{what}: done in {time.monotonic() - start:.2f} s")


def run_stage(name: str, reporter: Reporter, body: Callable[[], None]) -> int:
    """Run one stage; any failure sets status `error` with a readable reason. Returns an exit code."""
    reporter.say(f"stage {name}: start")
    try:
        body()
    except (StageError, JobStopped) as exc:
        reporter.say(f"stage {name}: failed: {exc}")
        reporter.status("error", f"{name}: {exc}")
        return 1
    except Exception as exc:
        traceback.print_exc(file=reporter.out)
        reporter.status("error", f"{name}: unexpected {type(exc).__name__}: {exc}")
        return 1
    reporter.say(f"stage {name}: finished")
    return 0

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


class ImsGone(StageError):
    """IMS could not be reached for longer than the give-up time: the job ends instead of waiting forever."""


# The last status report of a job that is stopping or failing: a few seconds at most, whatever IMS does.
FINAL_REPORT_SECONDS = 5.0


@dataclass
class Reporter:
    job_id: str
    client: ImsClient | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    # Since when IMS has been unreachable (monotonic), and whether the job gave up on it.
    unreachable_since: float | None = None
    gone: bool = False

    def say(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        elapsed = time.monotonic() - self.started
        print(f"{stamp} [+{elapsed:7.1f}s] {message}", file=self.out, flush=True)

    def status(self, status: str, reason: str | None = None, *, final: bool = False) -> None:
        """Tell IMS; like the original, a failed update is logged and the job goes on, unless IMS has been
        unreachable for longer than the give-up time (IMS_JOB_API_GIVE_UP_SECONDS): then ImsGone ends the
        stage. A `final` report (the job is failing or stopping) tries for a few seconds at most."""
        self.say(f"job status -> {status}" + (f" ({reason})" if reason else ""))
        if self.client is None:
            return
        if self.gone:
            if final:
                return
            raise ImsGone("IMS is unreachable; the job gave up on it")
        call_started = time.monotonic()
        try:
            if final:
                with self.client.giving_up_after(FINAL_REPORT_SECONDS):
                    self.client.set_job_status(self.job_id, status, reason)
            else:
                self.client.set_job_status(self.job_id, status, reason)
            self.unreachable_since = None
        except ImsApiError as exc:
            self.say(f"warning: could not set job status {status}: {exc}")
            if exc.status == 0 or exc.status >= 500:
                self._unreachable(call_started, final)

    def _unreachable(self, call_started: float, final: bool) -> None:
        give_up = self.client.give_up_seconds if self.client is not None else None
        if self.unreachable_since is None:
            self.unreachable_since = call_started
        away = time.monotonic() - self.unreachable_since
        if give_up is not None and away >= give_up:
            self.gone = True
            if not final:
                raise ImsGone(f"IMS has been unreachable for {away:.0f} s (IMS_JOB_API_GIVE_UP_SECONDS={give_up:g})")

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
        reporter.status("error", f"{name}: {exc}", final=True)
        return 1
    except Exception as exc:
        traceback.print_exc(file=reporter.out)
        reporter.status("error", f"{name}: unexpected {type(exc).__name__}: {exc}", final=True)
        return 1
    reporter.say(f"stage {name}: finished")
    return 0

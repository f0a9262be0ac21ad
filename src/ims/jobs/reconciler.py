"""The reconciler, run by every worker: no job stays in a status nothing will ever change.

- A running job whose owner is gone (lease lapsed, or on this host its process no longer exists) is taken
  over: if its process still runs here it is adopted (a restart of IMS loses nothing); otherwise it goes
  to `error` with the reason.
- A job that waited on the user longer than IMS_JOB_USER_WAIT_LIMIT goes to `error`; its owner then stops it.
  (The stage enforces the same limit itself; this is the backstop for a stage that hangs.)
- Deleted jobs nobody watches have their directories and rows removed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta

from ims.domain.timeutil import utcnow
from ims.jobs import state
from ims.jobs.logs import append_line
from ims.jobs.proc import pid_alive
from ims.jobs.runner import Runner, RunnerError
from ims.settings import Settings
from ims.store.db import Database

log = logging.getLogger(__name__)

USER_WAIT_MARGIN_SECONDS = 10.0


def owner_host_pid(owner: str) -> tuple[str, int | None]:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    return host, int(pid_text) if pid_text.isdigit() else None


class Reconciler:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        runner: Runner,
        owner: str,
        adopt: Callable[[state.JobRow], None],
    ) -> None:
        self.database = database
        self.settings = settings
        self.runner = runner
        self.owner = owner
        self.adopt = adopt
        self.host = socket.gethostname()

    def run(self) -> None:
        for step in (self._orphans, self._user_wait, self._tombstones):
            try:
                step()
            except Exception:
                log.exception("reconciler step %s failed", step.__name__)

    def owner_gone(self, row: state.JobRow) -> bool:
        if row.owner is None or row.lease_until is None or row.lease_until < utcnow():
            return True
        host, pid = owner_host_pid(row.owner)
        if host != self.host or pid is None:
            return False
        # On this host a dead owner is known at once; a pid equal to ours is a previous life of this
        # process (a container restarts its server with the same pid).
        return pid == os.getpid() or not pid_alive(pid)

    def _orphans(self) -> None:
        for row in state.unwatched(self.database, self.owner):
            if not self.owner_gone(row):
                continue
            if not state.take_over(self.database, row.id, row.owner, self.owner, self.settings.job_heartbeat_timeout):
                continue
            handle = row.runner
            here = handle is not None and self.runner.can_watch(handle)
            if handle is not None and here and self.runner.is_alive(handle):
                append_line(self.runner.log_path(row.id), f"worker {self.owner} adopted the job (was {row.owner})")
                self.adopt(row)
                continue
            if handle is None:
                reason = f"the worker {row.owner} stopped while it was starting the job"
            elif here:
                reason = (
                    f"the job's process (pid {handle.pid}) ended while no worker watched it "
                    f"(its worker {row.owner} had stopped)"
                )
            else:
                reason = (
                    f"the worker {row.owner} that ran the job on {handle.host} stopped renewing its lease "
                    f"for {self.settings.job_heartbeat_timeout:g} s; the job cannot be watched from {self.host}"
                )
            if here:
                append_line(self.runner.log_path(row.id), reason)
            if not row.final:
                state.fail(self.database, row.id, reason)
            log.warning("job %s: %s", row.id, reason)
            self._clean(row, here)

    def _clean(self, row: state.JobRow, here: bool) -> None:
        if here:
            try:
                self.runner.cleanup(row.id, keep_log=not row.deleted)
            except (RunnerError, OSError) as exc:
                log.warning("job %s: could not clean its directory: %s", row.id, exc)
        if row.deleted:
            state.remove(self.database, row.id)
        else:
            state.finish(self.database, row.id, self.owner)

    def _user_wait(self) -> None:
        limit = self.settings.job_user_wait_limit
        before = utcnow() - timedelta(seconds=limit + USER_WAIT_MARGIN_SECONDS)
        for row in state.waiting_since(self.database, "waiting_on_user", before):
            reason = (
                f"no complete or failed signal within {limit:g} s of waiting_on_user "
                "(IMS_JOB_USER_WAIT_LIMIT); the SSH environment was closed"
            )
            if state.fail(self.database, row.id, reason):
                log.warning("job %s: %s", row.id, reason)

    def _tombstones(self) -> None:
        for row in state.leftover_tombstones(self.database):
            if row.runner is not None and not self.runner.can_watch(row.runner):
                continue  # its directory is on another host; that host's worker removes it
            try:
                self.runner.cleanup(row.id, keep_log=False)
            except (RunnerError, OSError) as exc:
                log.warning("deleted job %s: could not remove its directory: %s", row.id, exc)
                continue
            state.remove(self.database, row.id)

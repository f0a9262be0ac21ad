"""The job worker: claims queued jobs, launches them through a Runner and watches their processes.

Liveness is the worker's job, not the stages': while a job's process lives its owner renews the row's
lease (`lease_until`, every IMS_JOB_HEARTBEAT_TIMEOUT/4 s). When the process ends before the job reached
`success` or `error` the owner moves it to `error` with the reason; when the job ended (or was deleted)
while the process still runs, the owner stops it. Stages therefore need no heartbeat of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ims.artifacts.s3 import ArtifactStore
from ims.domain.links import S3Location
from ims.jobs import state
from ims.jobs.logs import append_line
from ims.jobs.reconciler import Reconciler
from ims.jobs.runner import Runner, RunnerError, RunnerHandle
from ims.jobs.spec import build_spec
from ims.settings import Settings
from ims.store import job_tokens, repository
from ims.store.db import Database
from ims.tasks.loop import BackgroundLoop, make_owner_id

log = logging.getLogger(__name__)

# After a job reached success/error its process gets this long to leave by itself before it is stopped.
FINAL_GRACE_SECONDS = 5.0
STOP_GRACE_SECONDS = 10.0
RECONCILE_SECONDS = 2.0
MAX_CLAIM = 4


def last_line(path: Path, limit: int = 300) -> str:
    """The last line of the log a person would want in the status reason (not one of ours)."""
    try:
        with path.open("rb") as source:
            source.seek(max(0, path.stat().st_size - 16384))
            lines = source.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.strip() and " ims: " not in line:
            return line.strip()[-limit:]
    return ""


@dataclass
class Watched:
    handle: RunnerHandle
    final_since: float | None = None
    stopping: bool = False


class JobWorker(BackgroundLoop):
    thread_name = "ims-job-worker"

    def __init__(
        self,
        database: Database,
        settings: Settings,
        artifacts: ArtifactStore,
        runner: Runner,
        *,
        poll_seconds: float | None = None,
    ) -> None:
        super().__init__(poll_seconds or settings.task_poll_seconds)
        self.database = database
        self.settings = settings
        self.artifacts = artifacts
        self.runner = runner
        self.owner = make_owner_id()
        self.lease_seconds = settings.job_heartbeat_timeout
        self.reconciler = Reconciler(database, settings, runner, self.owner, self.adopt)
        self._watched: dict[str, Watched] = {}
        self._lock = threading.Lock()
        self._last_renew = 0.0
        self._last_reconcile = 0.0

    # --- lifecycle
    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching. The jobs keep running: the next worker on this host adopts them."""
        super().stop(timeout)

    def watching(self) -> list[str]:
        with self._lock:
            return list(self._watched)

    def tick(self) -> bool:
        now = time.monotonic()
        if now - self._last_reconcile >= RECONCILE_SECONDS:
            self._last_reconcile = now
            self.reconciler.run()
        self._launch_queued()
        self._watch()
        if self.watching() and time.monotonic() - self._last_renew >= self.lease_seconds / 4:
            self._last_renew = time.monotonic()
            state.renew(self.database, self.owner, self.lease_seconds)
        return False

    # --- launching
    def _launch_queued(self) -> None:
        for row in state.claim_queued(self.database, self.owner, self.lease_seconds, MAX_CLAIM):
            try:
                self._launch(row)
            except Exception as exc:
                log.exception("job %s could not be launched", row.id)
                state.fail(self.database, row.id, f"the job could not be started: {exc}")
                state.finish(self.database, row.id, self.owner)

    def _launch(self, row: state.JobRow) -> None:
        with self.database.read() as conn:
            record = repository.jobs.get(conn, row.id)
        if record is None:  # deleted before it started
            state.remove(self.database, row.id)
            return
        if row.final:  # moved to success/error by hand before it started: nothing to run
            state.finish(self.database, row.id, self.owner)
            return
        try:
            with self.database.write() as conn:
                token = job_tokens.issue(conn, row.id)  # a fresh token for this launch; only its hash is kept
            if token is None:
                raise RunnerError("the job's token was revoked before it started")
            spec = build_spec(record, row.launch, row.ssh_port, self.settings, self.artifacts, job_token=token)
            handle = self.runner.start(record, spec)
        except RunnerError as exc:
            append_line(self.runner.log_path(row.id), f"the job could not be started: {exc}")
            state.fail(self.database, row.id, f"the job could not be started: {exc}")
            state.finish(self.database, row.id, self.owner)
            return
        try:
            state.record_launch(self.database, row.id, self.owner, handle)
        except Exception:
            # A process nobody can find again must not live on: stop it, then report as any launch failure.
            self.runner.stop(handle, STOP_GRACE_SECONDS)
            self.runner.exit(handle)
            raise
        self._point_connection_info(row.id)
        append_line(self.runner.log_path(row.id), f"worker {self.owner} launched the job as pid {handle.pid}")
        log.info("job %s launched as pid %s", row.id, handle.pid)
        with self._lock:
            self._watched[row.id] = Watched(handle)

    def _point_connection_info(self, job_id: str) -> None:
        """The SSH endpoint is on the host that runs the job: this worker's IMS_SSH_HOST."""
        with self.database.write() as conn:
            record = state.lock_record(conn, job_id)
            if record is None or record.get("remote_build_node"):
                return  # on a remote build node the endpoint is the node's, named at POST
            changed = False
            for container in record.get("ssh_containers") or []:
                for endpoint in (container.get("connection_info") or {}).values():
                    if isinstance(endpoint, dict) and endpoint.get("host") != self.settings.ssh_host:
                        endpoint["host"] = self.settings.ssh_host
                        changed = True
            if changed:
                repository.jobs.save(conn, record)

    def adopt(self, row: state.JobRow) -> None:
        """Watch a job whose process outlived its previous worker (called by the reconciler)."""
        if row.runner is None:
            return
        with self._lock:
            self._watched[row.id] = Watched(row.runner)
        log.info("job %s adopted (pid %s)", row.id, row.runner.pid)

    # --- watching
    def _watch(self) -> None:
        with self._lock:
            watched = dict(self._watched)
        if not watched:
            return
        rows = {row.id: row for row in state.owned(self.database, self.owner)}
        for job_id, entry in watched.items():
            if entry.stopping:
                continue
            row = rows.get(job_id)
            if row is None:
                self._lost(job_id, entry)
            elif row.deleted:
                self._stop_in_background(job_id, entry, self._finish_deleted)
            elif not self.runner.is_alive(entry.handle):
                self._ended(row, entry)
            elif row.final:
                entry.final_since = entry.final_since or time.monotonic()
                if time.monotonic() - entry.final_since >= FINAL_GRACE_SECONDS:
                    append_line(self.runner.log_path(job_id), f"the job is {row.status}; stopping its process")
                    self._stop_in_background(job_id, entry, None)

    def _lost(self, job_id: str, entry: Watched) -> None:
        with self.database.read() as conn:
            row = state.load(conn, job_id)
        if row is not None and row.owner != self.owner:
            log.warning("job %s is now watched by %s", job_id, row.owner)
            self._forget(job_id)
            return
        # The row is gone altogether: nobody wants this process any more.
        self._stop_in_background(job_id, entry, self._finish_deleted)

    def _ended(self, row: state.JobRow, entry: Watched) -> None:
        ended = self.runner.exit(entry.handle)
        log_path = self.runner.log_path(row.id)
        append_line(log_path, f"the job's process {ended.describe()}")
        if not row.final:
            tail = last_line(log_path)
            reason = f"the job's process {ended.describe()} while the job was {row.status}"
            if tail:
                reason += f"; last log line: {tail}"
            state.fail(self.database, row.id, reason)
        self._cleanup(row.id, keep_log=True)
        state.finish(self.database, row.id, self.owner)
        self._forget(row.id)

    def _stop_in_background(self, job_id: str, entry: Watched, then: Any) -> None:
        entry.stopping = True

        def stop() -> None:
            try:
                self.runner.stop(entry.handle, STOP_GRACE_SECONDS)
                if then is not None:
                    then(job_id)
            except Exception:
                log.exception("stopping job %s failed", job_id)
            finally:
                entry.stopping = False
                self.wake()

        threading.Thread(target=stop, name=f"ims-job-stop-{job_id[:8]}", daemon=True).start()

    def _finish_deleted(self, job_id: str) -> None:
        self._cleanup(job_id, keep_log=False)
        state.remove(self.database, job_id)
        self._forget(job_id)
        log.info("job %s deleted; its process and directory are gone", job_id)

    def _cleanup(self, job_id: str, *, keep_log: bool) -> None:
        self._drop_unfinished_images(job_id)
        try:
            self.runner.cleanup(job_id, keep_log=keep_log)
        except (RunnerError, OSError) as exc:
            log.warning("job %s: could not clean its directory: %s", job_id, exc)

    def _drop_unfinished_images(self, job_id: str) -> None:
        """What a job left half done, once its process is gone: uploads it never completed (their parts would
        stay in S3 forever), and images it created but never linked, with their objects. A job holds no S3
        credential, so IMS does this undo for it (ims-python-helper does it itself with its keys)."""
        bucket = self.settings.s3_boot_images_bucket
        try:
            with self.database.read() as conn:
                images = job_tokens.result_images(conn, job_id)
                job = repository.jobs.get(conn, job_id)
            kept = (job or {}).get("resultant_image_id")
            for image_id in images:
                aborted = self.artifacts.abort_uploads_under(bucket, f"{image_id}/")
                if aborted:
                    log.info("job %s: aborted %d unfinished uploads of image %s", job_id, aborted, image_id)
                if image_id != kept and self._unlinked(image_id):
                    for key in self.artifacts.list_keys(bucket, f"{image_id}/"):
                        self.artifacts.delete(S3Location(bucket, key))
                    with self.database.write() as conn:
                        image = repository.images.get(conn, image_id)
                        if image is not None and not image.get("link"):
                            repository.images.remove(conn, image_id)
                            log.info("job %s: removed image %s, which it created but never linked", job_id, image_id)
        except Exception as exc:  # only storage: never let it stop the cleanup
            log.warning("job %s: could not remove what it left unfinished: %s", job_id, exc)

    def _unlinked(self, image_id: str) -> bool:
        with self.database.read() as conn:
            image = repository.images.get(conn, image_id)
        return image is not None and not image.get("link")

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._watched.pop(job_id, None)

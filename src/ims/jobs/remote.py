"""RemoteNodeRunner: a job's stages on a registered build node, over SSH (docs/remote-nodes.md).

On the node everything of the job lives in `/tmp/ims_<job_id>/` (the original's convention; its presence
is how a node's job count is read): `code/` (the bundle, ims.jobs.remote_bundle), `image/` (the job's
IMAGE_ROOT_PARENT), `job.log`, `exit`. The node agent (ims.jobs.remote_agent) starts the stages there
exactly as the LocalRunner does here (`ims.jobs.nsinit` + `ims.stages`, the same sandbox), with only the
job's environment: IMS_URL, IMS_JOB_TOKEN, DOWNLOAD_URL and the original's job variables, no S3 or admin
credentials.

On this host the job keeps its usual directory `<jobs_dir>/<job_id>/` with `job.log` (the node's log,
copied as it grows, plus the worker's lines) and `remote.json` (the node and how much of its log was
copied), so the API serves the log as for a local job and any IMS host can take the job over.

Liveness: one monitor thread per job polls the node every POLL_SECONDS over SSH: the supervisor's pid and
start time, the node's boot id, new log bytes. The job ends in `error` with a reason when the process is
gone, when the node restarted, when its host key changed, or when it has not answered for
IMS_REMOTE_LOST_SECONDS (30 s by default: well inside the 60 s the job may take to be declared lost).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ims.jobs import remote_bundle
from ims.jobs.local import LOG_NAME, safe_job_id
from ims.jobs.logs import append_line
from ims.jobs.remote_ssh import NodeRefused, NodeSsh, SshResult
from ims.jobs.runner import Exit, JobSpec, RunnerError, RunnerHandle
from ims.settings import Settings
from ims.store import repository
from ims.store.db import Database

log = logging.getLogger(__name__)

STATE_NAME = "remote.json"
POLL_SECONDS = 2.0
# S3 and admin credentials never go to a node; the job reaches S3 through presigned URLs only.
NEVER_SENT = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ENDPOINT", "IMS_API_TOKEN")
# mkdir without -p: the directory is made here, by root, never one someone else left in /tmp.
_UNPACK = (
    'set -e; rm -rf --one-file-system "$1"; mkdir -m 0755 "$1"; mkdir -m 0755 "$1/image" "$1/code"; '
    'tar -xzf - -C "$1/code"'
)


def remote_dir(job_id: str) -> str:
    return f"/tmp/ims_{safe_job_id(job_id)}"


@dataclass(frozen=True)
class RemoteExit(Exit):
    """How a job on a node ended; `reason` when it is more than an exit status (node lost, restarted)."""

    reason: str = ""

    def describe(self) -> str:
        return self.reason or super().describe()


class Monitor:
    """Watches one job on its node; the worker asks it `alive` on every tick, which never waits on SSH."""

    def __init__(self, runner: RemoteNodeRunner, job_id: str, handle: RunnerHandle) -> None:
        self.runner = runner
        self.job_id = job_id
        self.handle = handle
        self.alive = True
        self.exit_code: int | None = None
        self.reason = ""
        self.polled = False
        self.failing_since: float | None = None
        self.last_error = ""
        self.offset = int(runner.read_state(job_id).get("offset", 0))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def node(self) -> str:
        return self.handle.host

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"ims-remote-{self.job_id[:8]}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set() and self.alive:
            try:
                self.poll_once()
            except Exception:  # a monitor must never die silently: the job would hang
                log.exception("job %s: polling node %s failed", self.job_id, self.node)
            self._stop.wait(POLL_SECONDS)

    def poll_once(self) -> None:
        with self._lock:
            self._poll()
            self.polled = True

    def _poll(self) -> None:
        if not self.alive:
            return
        handle = self.handle
        try:
            result = self.runner.agent(
                self.node, self.job_id, "poll", str(handle.pid), str(handle.start), str(self.offset), timeout=20
            )
        except NodeRefused as exc:
            self._dead(None, f"on node {self.node} cannot be watched any more: {exc}")
            return
        answer = _json(result)
        if answer is None:
            now = time.monotonic()
            self.failing_since = self.failing_since or now
            self.last_error = result.error() if result.returncode == 255 else _describe(result)
            lost = self.runner.settings.remote_lost_seconds
            if now - self.failing_since >= lost:
                self._dead(
                    None,
                    f"on node {self.node} could not be reached for {lost:g} s (last error: {self.last_error})",
                )
            return
        self.failing_since = None
        if handle.boot and answer.get("boot") and answer["boot"] != handle.boot:
            self._dead(None, f"on node {self.node} is gone: the node restarted")
            return
        self._take_log(answer)
        if not answer.get("alive"):
            code = answer.get("exit")
            while self._take_log(self._poll_more()):  # the rest of the log, now that it no longer grows
                pass
            if isinstance(code, int):
                self._dead(code, "")
            elif not answer.get("exists"):
                self._dead(None, f"on node {self.node} is gone: {remote_dir(self.job_id)} no longer exists")
            else:
                self._dead(None, f"on node {self.node} ended without an exit status (it was killed)")

    def _poll_more(self) -> dict[str, Any] | None:
        handle = self.handle
        try:
            result = self.runner.agent(
                self.node, self.job_id, "poll", str(handle.pid), str(handle.start), str(self.offset), timeout=20
            )
        except NodeRefused:
            return None
        return _json(result)

    def _take_log(self, answer: dict[str, Any] | None) -> bool:
        if not answer:
            return False
        chunk = base64.b64decode(answer.get("log") or "")
        if not chunk or not self.runner.job_dir(self.job_id).is_dir():  # nothing new, or the job is gone here
            return False
        with self.runner.log_path(self.job_id).open("ab") as out:
            out.write(chunk)
        self.offset = int(answer.get("offset", self.offset + len(chunk)))
        self.runner.write_state(self.job_id, node=self.node, offset=self.offset)
        return True

    def _dead(self, code: int | None, reason: str) -> None:
        self.exit_code = code
        self.reason = reason
        self.alive = False


def _json(result: SshResult) -> dict[str, Any] | None:
    if not result.ok:
        return None
    try:
        answer = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return answer if isinstance(answer, dict) else None


def _describe(result: SshResult) -> str:
    return f"the node agent failed ({result.returncode}): {result.error()}"


class RemoteNodeRunner:
    name = "remote"

    def __init__(self, jobs_dir: Path, database: Database, settings: Settings) -> None:
        self.jobs_dir = Path(os.path.abspath(jobs_dir))
        self.settings = settings
        self.ssh = NodeSsh(database, settings)
        self._monitors: dict[str, Monitor] = {}
        self._lock = threading.Lock()

    # --- layout on this host
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / safe_job_id(job_id)

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / LOG_NAME

    def read_state(self, job_id: str) -> dict[str, Any]:
        try:
            data = json.loads((self.job_dir(job_id) / STATE_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, job_id: str, **values: Any) -> None:
        path = self.job_dir(job_id) / STATE_NAME
        scratch = path.with_name(STATE_NAME + ".new")
        scratch.write_text(json.dumps({**self.read_state(job_id), **values}))
        os.replace(scratch, path)

    def knows(self, job_id: str) -> bool:
        """Whether the job ran on a node (its state file is here)."""
        return (self.job_dir(job_id) / STATE_NAME).exists()

    # --- the node agent
    def agent(self, node: str, job_id: str, *args: str, input: bytes | None = None, timeout: float = 30) -> SshResult:
        code = f"{remote_dir(job_id)}/code"
        argv = ["env", f"PYTHONPATH={code}", "python3", "-m", "ims.jobs.remote_agent", args[0], job_id, *args[1:]]
        return self.ssh.run(node, argv, input=input, timeout=timeout)

    # --- Runner
    def start(self, job: Mapping[str, Any], spec: JobSpec) -> RunnerHandle:
        node = str(job.get("remote_build_node") or "")
        if not node:
            raise RunnerError("the job names no remote build node")
        job_id = spec.job_id
        directory = self.job_dir(job_id)
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        log_path = self.log_path(job_id)
        append_line(log_path, f"starting stage `{spec.stage}` on node {node} in {remote_dir(job_id)}")
        self.write_state(job_id, node=node, offset=0)
        try:
            code = remote_bundle.bundle(self.bundle_dir)
        except Exception as exc:
            raise RunnerError(f"could not make the job's code bundle: {exc}") from exc
        try:
            unpacked = self.ssh.run(
                node, ["sh", "-c", _UNPACK, "ims-unpack", remote_dir(job_id)], input=code.read_bytes(), timeout=300
            )
            if not unpacked.ok:
                raise RunnerError(f"could not ship the job's code to node {node}: {unpacked.error()}")
            env = {name: value for name, value in spec.env.items() if name not in NEVER_SENT}
            if "IMS_SSH_LISTEN" in env:  # the job's sshd listens on the node's address, not this host's
                env["IMS_SSH_LISTEN"] = node if _is_address(node) else "0.0.0.0"  # noqa: S104
            deadman = f"{self.deadman_seconds:g}"
            started = self.agent(node, job_id, "start", spec.stage, deadman, input=json.dumps(env).encode(), timeout=60)
        except NodeRefused as exc:
            raise RunnerError(str(exc)) from None
        answer = _json(started)
        if answer is None:
            raise RunnerError(f"could not start the job on node {node}: {_describe(started)}")
        handle = RunnerHandle(
            runner=self.name,
            host=node,
            pid=int(answer["pid"]),
            start=int(answer["start"]),
            boot=str(answer.get("boot") or ""),
            job_dir=remote_dir(job_id),
        )
        append_line(log_path, f"node {node} runs the job as pid {handle.pid}")
        self._monitor(job_id, handle)
        return handle

    def warm(self) -> None:
        """Make the code bundle ahead of the first remote job (in the background; only when nodes exist)."""

        def make() -> None:
            try:
                with self.ssh.database.read() as conn:
                    if not repository.remote_build_nodes.fetch(conn):
                        return
                remote_bundle.bundle(self.bundle_dir)
            except Exception:
                log.warning("the job code bundle could not be made ahead of time", exc_info=True)

        threading.Thread(target=make, name="ims-remote-bundle", daemon=True).start()

    @property
    def bundle_dir(self) -> Path:
        return Path(os.path.abspath(self.settings.data_dir)) / "remote"

    @property
    def deadman_seconds(self) -> float:
        """How long the node waits for IMS's next poll before it stops the job itself (IMS gave it up)."""
        return 2 * self.settings.remote_lost_seconds

    def can_watch(self, handle: RunnerHandle) -> bool:
        # Any IMS host reaches the node: a restarted (or another) IMS adopts the job.
        return handle.runner == self.name

    def _monitor(self, job_id: str, handle: RunnerHandle) -> Monitor:
        with self._lock:
            monitor = self._monitors.get(job_id)
            if monitor is None or monitor.handle != handle:
                if monitor is not None:
                    monitor.close()
                monitor = self._monitors[job_id] = Monitor(self, job_id, handle)
                created = True
            else:
                created = False
        if created:
            if not self.knows(job_id):  # adopted from another host: start its local log and state
                self.job_dir(job_id).mkdir(mode=0o755, parents=True, exist_ok=True)
                self.write_state(job_id, node=handle.host, offset=0)
            monitor.poll_once()
            monitor.start()
        return monitor

    def is_alive(self, handle: RunnerHandle) -> bool:
        job_id = _job_id_of(handle)
        return self._monitor(job_id, handle).alive

    def exit(self, handle: RunnerHandle) -> Exit:
        job_id = _job_id_of(handle)
        with self._lock:
            monitor = self._monitors.pop(job_id, None)
        if monitor is None:
            return RemoteExit(None, "")
        monitor.close()
        return RemoteExit(monitor.exit_code, monitor.reason)

    def stop(self, handle: RunnerHandle, grace: float) -> None:
        job_id = _job_id_of(handle)
        monitor = self._monitor(job_id, handle)
        if not monitor.alive:
            return
        try:
            result = self.agent(
                handle.host, job_id, "stop", str(handle.pid), str(handle.start), f"{grace:g}", timeout=grace + 30
            )
        except NodeRefused as exc:
            log.warning("job %s: cannot stop it on node %s: %s", job_id, handle.host, exc)
            return
        if not result.ok:
            log.warning("job %s: stopping it on node %s failed: %s", job_id, handle.host, result.error())
        monitor.poll_once()

    def cleanup(self, job_id: str, *, keep_log: bool) -> None:
        with self._lock:
            monitor = self._monitors.pop(job_id, None)
        if monitor is not None:
            monitor.close()
        node = str(self.read_state(job_id).get("node") or "")
        problem = ""
        if node:
            try:
                result = self.agent(node, job_id, "cleanup", timeout=120)
                if not result.ok and "No module named" not in result.stderr:  # no code there: nothing left
                    problem = f"could not remove {remote_dir(job_id)} on node {node}: {result.error()}"
            except NodeRefused as exc:
                problem = f"could not remove {remote_dir(job_id)} on node {node}: {exc}"
        directory = self.job_dir(job_id)
        if directory.exists():
            if keep_log:
                for entry in directory.iterdir():
                    if entry.name != LOG_NAME:
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(directory)
        if problem:
            raise RunnerError(problem)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _job_id_of(handle: RunnerHandle) -> str:
    name = Path(handle.job_dir).name
    if not name.startswith("ims_"):
        raise RunnerError(f"not a remote job directory: {handle.job_dir}")
    return safe_job_id(name[len("ims_") :])

"""LocalRunner: a job's stages as a process tree on this host, in private mount and PID namespaces.

Layout under `effective_jobs_dir` (a root-owned 0755 tree, so sshd's ChrootDirectory rule can hold):

    <jobs_dir>/<job_id>/job.log   the stages' stdout and stderr, plus the worker's own lines; kept after the job
    <jobs_dir>/<job_id>/image/    IMAGE_ROOT_PARENT, the original's /mnt/image: image-root, signal files, sshd

The process runs in its own session, so stopping or restarting IMS leaves it running; the next worker on
this host adopts it again by pid (see ims.jobs.reconciler).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ims.jobs.logs import append_line
from ims.jobs.proc import boot_id, first_child, mounts_under, send, start_ticks
from ims.jobs.runner import Exit, JobSpec, RunnerError, RunnerHandle

log = logging.getLogger(__name__)

LOG_NAME = "job.log"
IMAGE_DIR = "image"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def safe_job_id(job_id: str) -> str:
    # Job ids are server-made UUIDs; anything else must never become a path.
    if not job_id or not all(ch.isalnum() or ch == "-" for ch in job_id):
        raise RunnerError(f"not a job id: {job_id!r}")
    return job_id


class LocalRunner:
    name = "local"

    def __init__(
        self, jobs_dir: Path, *, stage_command: Sequence[str] | None = None, host: str | None = None
    ) -> None:
        self.jobs_dir = Path(os.path.abspath(jobs_dir))
        # The stage's name is appended: `python -m ims.stages customize` unless told otherwise.
        self.stage_command = list(stage_command or [sys.executable, "-m", "ims.stages"])
        self.host = host or socket.gethostname()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    # --- layout
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / safe_job_id(job_id)

    def image_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / IMAGE_DIR

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / LOG_NAME

    def _make_tree(self, job_id: str) -> Path:
        for directory in (self.jobs_dir, self.job_dir(job_id), self.image_dir(job_id)):
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(directory, 0o755)  # noqa: S103 - sshd needs the path readable, writable by root only
        return self.image_dir(job_id)

    def _env(self, spec: JobSpec, image: Path) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(spec.env)
        env["IMAGE_ROOT_PARENT"] = str(image)
        return env

    # --- Runner
    def start(self, job: Mapping[str, Any], spec: JobSpec) -> RunnerHandle:
        if os.geteuid() != 0:
            raise RunnerError(
                "the local runner needs root: jobs unpack images with their owners, use namespaces and run sshd"
            )
        stale = self.image_dir(spec.job_id)
        if stale.exists():
            self._remove(stale)
        image = self._make_tree(spec.job_id)
        log_path = self.log_path(spec.job_id)
        argv = [sys.executable, "-m", "ims.jobs.nsinit", "--", *self.stage_command, spec.stage]
        append_line(log_path, f"starting stage `{spec.stage}` on {self.host} in {image}")
        with log_path.open("ab") as out:
            os.chmod(log_path, 0o640)
            try:
                process = subprocess.Popen(
                    argv,
                    env=self._env(spec, image),
                    cwd=image,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise RunnerError(f"could not start the job's process: {exc}") from exc
        with self._lock:
            self._children[process.pid] = process
        return RunnerHandle(
            runner=self.name,
            host=self.host,
            pid=process.pid,
            start=start_ticks(process.pid) or 0,
            boot=boot_id(),
            job_dir=str(self.job_dir(spec.job_id)),
        )

    def can_watch(self, handle: RunnerHandle) -> bool:
        return handle.runner == self.name and handle.host == self.host

    def is_alive(self, handle: RunnerHandle) -> bool:
        with self._lock:
            child = self._children.get(handle.pid)
        if child is not None:
            return child.poll() is None
        return handle.process.alive()

    def exit(self, handle: RunnerHandle) -> Exit:
        with self._lock:
            child = self._children.pop(handle.pid, None)
        if child is None:
            return Exit(None)
        code = child.wait()
        return Exit(128 - code if code < 0 else code)  # a signal death reads like a shell's status

    def stop(self, handle: RunnerHandle, grace: float) -> None:
        if not self.is_alive(handle):
            return
        # The launcher forwards SIGTERM to the stage; SIGKILL on the launcher takes init, and with it
        # every process of the job's PID namespace, down at once.
        send(handle.pid, signal.SIGTERM)
        if self._wait_gone(handle, grace):
            return
        init = first_child(handle.pid)
        send(handle.pid, signal.SIGKILL)
        if init is not None:
            send(init, signal.SIGKILL)
        self._wait_gone(handle, 10.0)

    def _wait_gone(self, handle: RunnerHandle, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.is_alive(handle):
                return True
            time.sleep(0.05)
        return not self.is_alive(handle)

    def cleanup(self, job_id: str, *, keep_log: bool) -> None:
        job_dir = self.job_dir(job_id)
        if not job_dir.exists():
            return
        if keep_log:
            for entry in job_dir.iterdir():
                if entry.name != LOG_NAME:
                    self._remove(entry)
        else:
            self._remove(job_dir)

    @staticmethod
    def _remove(path: Path) -> None:
        mounted = mounts_under(path)
        if mounted:
            # Deleting through a mount could reach host files; leave it for an operator.
            raise RunnerError(f"{path} still has mounts ({', '.join(mounted[:3])}); not removing it")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

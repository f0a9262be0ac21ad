"""A task worker: claims tasks, runs their handler, renews the lease while it works."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from ims.tasks.queue import Task, TaskQueue

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]


class TaskWorker:
    def __init__(
        self,
        queue: TaskQueue,
        handlers: dict[str, Handler],
        *,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.queue = queue
        self.handlers = handlers
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ims-task-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def run_once(self) -> bool:
        """Claim and run one task; False when there was none."""
        task = self.queue.claim(self.owner, self.lease_seconds)
        if task is None:
            return False
        self._run(task)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:
                log.exception("task worker loop failed; retrying")
                worked = False
            if not worked:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def _run(self, task: Task) -> None:
        handler = self.handlers.get(task.kind)
        if handler is None:
            self.queue.fail(task.id, self.owner, f"no handler for task kind {task.kind}", attempts=99)
            return
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(task, done), daemon=True)
        renewer.start()
        try:
            handler(task.payload)
        except Exception as exc:
            log.warning("task %s (%s on %s) failed: %s", task.id, task.kind, task.resource, exc)
            done.set()
            self.queue.fail(task.id, self.owner, f"{type(exc).__name__}: {exc}", task.attempts)
        else:
            done.set()
            self.queue.complete(task.id, self.owner)
            log.info("task %s (%s on %s) done", task.id, task.kind, task.resource)
        renewer.join(1.0)

    def _renew(self, task: Task, done: threading.Event) -> None:
        while not done.wait(self.lease_seconds / 3):
            try:
                self.queue.extend(task.id, self.owner, self.lease_seconds)
            except Exception:
                log.exception("could not renew the lease of task %s", task.id)

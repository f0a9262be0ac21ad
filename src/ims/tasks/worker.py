"""A task worker: claims tasks, runs their handler, renews the lease while it works."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ims.tasks.loop import BackgroundLoop, make_owner_id
from ims.tasks.queue import Task, TaskQueue

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]


class TaskWorker(BackgroundLoop):
    thread_name = "ims-task-worker"

    def __init__(
        self,
        queue: TaskQueue,
        handlers: dict[str, Handler],
        *,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        is_transient: Callable[[Exception], bool] = lambda _: False,
    ) -> None:
        super().__init__(poll_seconds)
        self.queue = queue
        self.handlers = handlers
        self.lease_seconds = lease_seconds
        self.owner = make_owner_id()
        # Which failures are retried for as long as they last (S3 away) instead of counting as attempts.
        self.is_transient = is_transient

    def run_once(self) -> bool:
        """Claim and run one task; False when there was none."""
        task = self.queue.claim(self.owner, self.lease_seconds)
        if task is None:
            return False
        self._run(task)
        return True

    def tick(self) -> bool:
        return self.run_once()

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
            transient = self.is_transient(exc)
            log.warning("task %s (%s on %s) failed%s: %s", task.id, task.kind, task.resource,
                        " (transient; retried)" if transient else "", exc)
            done.set()
            self.queue.fail(task.id, self.owner, f"{type(exc).__name__}: {exc}", task.attempts, transient=transient)
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

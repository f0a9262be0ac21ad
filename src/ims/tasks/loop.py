"""A background thread that does a pass of work, then sleeps until woken or the poll interval passes."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

log = logging.getLogger(__name__)


def make_owner_id() -> str:
    """Who holds a lease: host, process and a random part, so two loops in one process differ."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class BackgroundLoop:
    thread_name = "ims-loop"

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def tick(self) -> bool:
        """One pass; True when there may be more work at once (no sleep before the next pass)."""
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick()
            except Exception:
                log.exception("%s pass failed; retrying", self.thread_name)
                busy = False
            if not busy:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

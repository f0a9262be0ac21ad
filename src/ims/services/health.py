"""Readiness and liveness checks of one server process: the database and S3 probes, the SQLite file.

Two daemon threads, one per dependency, probe the database and S3 every IMS_HEALTH_PROBE_SECONDS with short
timeouts and keep their last answer, so a readiness check answers at once even while S3 hangs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy.engine import make_url

from ims.artifacts.s3 import ArtifactStore
from ims.services.context import ServiceContext


class HealthProbe:
    """Two daemon threads, one per dependency, each keeping its last answer and when it was given."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.interval = ctx.settings.health_probe_seconds
        timeout = min(2.0, ctx.settings.s3_request_timeout)
        config = replace(ctx.artifacts.config, connect_timeout=timeout, read_timeout=timeout, max_attempts=1)
        self._s3 = ArtifactStore(config)
        self.results: dict[str, tuple[bool, float]] = {}
        self._s3_failures = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, check in (("database", self.ctx.database.ping), ("s3", self._ping_s3)):
            thread = threading.Thread(target=self._loop, args=(name, check), name=f"ims-health-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def _ping_s3(self) -> bool:
        up = self._s3.ping()
        # Requests that need S3 fail fast while it is known to be down (two probes in a row failed, so one
        # slow answer on a loaded machine is not taken for an outage), instead of each waiting its timeout.
        self._s3_failures = 0 if up else self._s3_failures + 1
        if up:
            self.ctx.request_artifacts.mark_up()
        elif self._s3_failures >= 2:
            self.ctx.request_artifacts.mark_down()
        return up

    def _loop(self, name: str, check: object) -> None:
        while not self._stop.is_set():
            try:
                up = bool(check())  # type: ignore[operator]
            except Exception:
                up = False
            self.results[name] = (up, time.monotonic())
            self._stop.wait(self.interval)

    def state(self, name: str) -> bool:
        """Up when the last probe said so and is recent (a probe stuck in a hung call counts as down)."""
        up, at = self.results.get(name, (False, 0.0))
        stale = time.monotonic() - at > 2 * self.interval + 2 * self.ctx.settings.s3_request_timeout
        return up and not stale

    def stuck(self) -> bool:
        """A probe thread died or has given no answer for a long time."""
        if any(not thread.is_alive() for thread in self._threads):
            return True
        limit = 10 * self.interval + 60
        now = time.monotonic()
        return any(now - at > limit for _, at in self.results.values())


def sqlite_file(ctx: ServiceContext) -> Path | None:
    """The SQLite database file, or None for another database (or an in-memory one)."""
    url = make_url(ctx.database.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)

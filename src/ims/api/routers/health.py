"""/healthz/ready, /healthz/live and /version.

Readiness is a cached answer: background threads probe the database and S3 every IMS_HEALTH_PROBE_SECONDS
with short timeouts, so a ready probe answers at once even while S3 hangs (it used to wait minutes and
fill the thread pool). Liveness checks that this process can still serve: the thread pool that runs
every use case answers, the probes are not stuck, the SQLite file is still there.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url
from starlette.concurrency import run_in_threadpool

from ims import __version__
from ims.api import docs, models
from ims.api.deps import services
from ims.api.http import ok
from ims.artifacts.s3 import ArtifactStore
from ims.services.context import ServiceContext

log = logging.getLogger(__name__)

LIVE_POOL_SECONDS = 2.0


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


def start_probe(app: FastAPI) -> HealthProbe:
    """Start the probes with the app (every server process has its own)."""
    found = getattr(app.state, "health_probe", None)
    if found is None:
        found = app.state.health_probe = HealthProbe(app.state.services.ctx)
        found.start()
    return found  # type: ignore[no-any-return]


def probe(request: Request) -> HealthProbe:
    return start_probe(request.app)


def _sqlite_file(ctx: ServiceContext) -> Path | None:
    url = make_url(ctx.database.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def build() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz/live", summary="The process can still serve",
                responses={**docs.responses(200, models.Empty),
                           503: docs.plain_response(models.Message, "This process can no longer serve.")})
    async def live(request: Request) -> JSONResponse:
        ctx = services(request).ctx
        problem = None
        try:
            await asyncio.wait_for(run_in_threadpool(lambda: None), LIVE_POOL_SECONDS)
        except TimeoutError:
            problem = f"the request thread pool did not answer within {LIVE_POOL_SECONDS:g} s"
        sqlite = _sqlite_file(ctx)
        if problem is None and sqlite is not None and not sqlite.exists():
            problem = f"the database file {sqlite} is gone"
        if problem is None and probe(request).stuck():
            problem = "the health probes are stuck"
        if problem is not None:
            log.error("not live: %s", problem)
            return JSONResponse({"message": f"Not live: {problem}."}, status_code=503)
        return ok({})

    @router.get("/healthz/ready", summary="The database and S3 answer (a cached probe; answers at once)",
                responses={**docs.responses(200, models.Empty), 503: docs.plain_response(models.Readiness, "Not ready.")})
    async def ready(request: Request) -> JSONResponse:
        found = probe(request)
        for _ in range(20):  # just started: wait (at most 2 s) for the first answers
            if len(found.results) == 2:
                break
            await asyncio.sleep(0.1)
        database_ok, s3_ok = found.state("database"), found.state("s3")
        if database_ok and s3_ok:
            return ok({})
        return JSONResponse({"database": database_ok, "s3": s3_ok}, status_code=503)

    @router.get("/version", summary="Version of IMS", responses=docs.responses(200, models.Version))
    async def version() -> JSONResponse:
        return ok({"version": __version__})

    return router

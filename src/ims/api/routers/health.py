"""/healthz/ready, /healthz/live and /version.

Readiness is a cached answer: background threads (ims.services.health) probe the database and S3 every
IMS_HEALTH_PROBE_SECONDS with short timeouts, so a ready probe answers at once even while S3 hangs (it
used to wait minutes and fill the thread pool). Liveness checks that this process can still serve: the
thread pool that runs every use case answers, the probes are not stuck, the SQLite file is still there.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ims import __version__
from ims.api import docs, models
from ims.api.deps import services
from ims.api.http import ok
from ims.services.health import HealthProbe, sqlite_file

log = logging.getLogger(__name__)

LIVE_POOL_SECONDS = 2.0


def start_probe(app: FastAPI) -> HealthProbe:
    """Start the probes with the app (every server process has its own)."""
    found = getattr(app.state, "health_probe", None)
    if found is None:
        found = app.state.health_probe = HealthProbe(app.state.services.ctx)
        found.start()
    return found  # type: ignore[no-any-return]


def probe(request: Request) -> HealthProbe:
    return start_probe(request.app)


def build() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get(
        "/healthz/live",
        summary="The process can still serve",
        responses={
            **docs.responses(200, models.Empty),
            503: docs.plain_response(models.Message, "This process can no longer serve."),
        },
    )
    async def live(request: Request) -> JSONResponse:
        ctx = services(request).ctx
        problem = None
        try:
            await asyncio.wait_for(run_in_threadpool(lambda: None), LIVE_POOL_SECONDS)
        except TimeoutError:
            problem = f"the request thread pool did not answer within {LIVE_POOL_SECONDS:g} s"
        sqlite = sqlite_file(ctx)
        if problem is None and sqlite is not None and not sqlite.exists():
            problem = f"the database file {sqlite} is gone"
        if problem is None and probe(request).stuck():
            problem = "the health probes are stuck"
        if problem is not None:
            log.error("not live: %s", problem)
            return JSONResponse({"message": f"Not live: {problem}."}, status_code=503)
        return ok({})

    @router.get(
        "/healthz/ready",
        summary="The database and S3 answer (a cached probe; answers at once)",
        responses={**docs.responses(200, models.Empty), 503: docs.plain_response(models.Readiness, "Not ready.")},
    )
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

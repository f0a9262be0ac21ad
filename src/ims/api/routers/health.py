"""/healthz/ready, /healthz/live and /version."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ims import __version__
from ims.api import docs, models
from ims.api.deps import call, services
from ims.api.http import ok


def build() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz/live", summary="The process answers", responses=docs.responses(200, models.Empty))
    async def live() -> JSONResponse:
        return ok({})

    @router.get("/healthz/ready", summary="The database and S3 answer",
                responses={**docs.responses(200, models.Empty), 503: docs.plain_response(models.Readiness, "Not ready.")})
    async def ready(request: Request) -> JSONResponse:
        ctx = services(request).ctx
        database_ok = await call(ctx.database.ping)
        s3_ok = await call(ctx.artifacts.ping)
        if database_ok and s3_ok:
            return ok({})
        return JSONResponse({"database": database_ok, "s3": s3_ok}, status_code=503)

    @router.get("/version", summary="Version of IMS", responses=docs.responses(200, models.Version))
    async def version() -> JSONResponse:
        return ok({"version": __version__})

    return router

"""The FastAPI application: routers under '', /v2 and /v3, the original's error bodies, size limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ims import __version__
from ims.api import auth, caching, docs, fast_writes, metrics
from ims.api.deps import Services
from ims.api.http import (
    MSG_METHOD,
    MSG_NOT_FOUND_URL,
    RawHttpError,
    ims_error_response,
    problem,
    raw_error_response,
    unexpected_error_response,
)
from ims.api.routers import health, job_artifacts, records, remote_nodes
from ims.domain.errors import ImsError

VERSIONS = (("", "v2"), ("/v2", "v2"), ("/v3", "v3"))
RouterHook = Callable[[FastAPI, str, str], None]
# Later features (jobs, logs, metrics) register here to be mounted under every prefix.
ROUTER_HOOKS: list[RouterHook] = []


class BodySizeLimit:
    """Refuse bodies over the limit with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RawHttpError(413, "The request body is too large.")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, f"The request body is larger than the limit of {self.limit} bytes.")
        await response(scope, receive, send)


class HeadAndOptions:
    """Answer HEAD as GET without a body and OPTIONS with an `Allow` header, as Flask did for the original."""

    def __init__(self, app: ASGIApp, router: Any) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            allowed = self._allowed(scope)
            if allowed:
                response = Response(status_code=200, headers={"Allow": ", ".join(sorted(allowed))})
                await response(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, send_headers_only)

    def _allowed(self, scope: Scope) -> set[str]:
        return allowed_methods(self.router, scope)


def allowed_methods(router: Any, scope: Scope) -> set[str]:
    """Every method some route answers on this path (for `Allow` on OPTIONS and 405)."""
    allowed = {
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches(dict(scope, method=method))[0] == Match.FULL for route in router.routes)
    }
    if allowed:
        allowed |= {"OPTIONS"} | ({"HEAD"} if "GET" in allowed else set())
    return allowed


class RefuseNul:
    """A NUL in the path or the query string: 404 / 400 at once. PostgreSQL cannot even compare such a
    string (it refuses NUL in text), so it never reaches a query, and SQLite behaves the same."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if "\x00" in scope.get("path", ""):
                await problem(404, MSG_NOT_FOUND_URL)(scope, receive, send)
                return
            query = scope.get("query_string", b"").lower()
            if b"%00" in query or b"\x00" in query:
                await problem(400, "Query parameters must not contain a NUL character.")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _unique_id(route: APIRoute) -> str:
    method = sorted(route.methods or {"get"})[0].lower()
    path = route.path.replace("{", "").replace("}", "").strip("/").replace("/", "_").replace("-", "_")
    if not route.path.startswith(("/v2/", "/v3/", "/healthz", "/version")):
        path = "root_" + path
    return f"{method}_{path}"


def create_app(services: Services, *, start_workers: Callable[[], Callable[[], None]] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = start_workers() if start_workers is not None else None
        health.start_probe(app)
        try:
            yield
        finally:
            if stop is not None:
                stop()
            services.ctx.database.dispose()

    app = FastAPI(
        title="Image Management Service",
        version=__version__,
        description=(
            "Stores Kiwi-NG recipes and boot images in S3, manages SSH public keys and runs create and "
            "customize jobs. Wire-compatible with the Cray-HPE IMS; un-prefixed paths are v2 aliases."
        ),
        redirect_slashes=False,
        lifespan=lifespan,
        generate_unique_id_function=_unique_id,
        # IMS exports Prometheus metrics of its own; FastAPI's OpenTelemetry hooks would only cost every request
        # a look at the environment.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    auth.install(app, services)  # before the routers: every route they add checks its caller first

    app.include_router(health.build())
    # Routing tries routes in the order they were added (about 1.5 µs each, and it matches twice), so what
    # clients write to most comes first: /v3 (BOS, SAT, the cray CLI) beside the un-prefixed v2 (CFS, job pods,
    # ims-load-artifacts); jobs and images before recipes and keys; /v2 spelled out, which none of them use,
    # last. No two prefixes share a path, so the order changes nothing else.
    busiest, spelled_out = [("/v3", "v3"), ("", "v2")], ("/v2", "v2")
    assert {*busiest, spelled_out} == set(VERSIONS)
    for hook in ROUTER_HOOKS:
        for prefix, version in busiest:
            hook(app, prefix, version)
    for resource in reversed(records.RESOURCES):
        for prefix, version in busiest:
            app.include_router(records.build(resource, version), prefix=prefix)
    for resource in records.RESOURCES:
        app.include_router(records.build_deleted(resource), prefix="/v3")
    app.include_router(remote_nodes.build(), prefix="/v3")
    app.include_router(job_artifacts.build(), prefix="/v3")
    for hook in ROUTER_HOOKS:
        hook(app, *spelled_out)
    for resource in records.RESOURCES:
        app.include_router(records.build(resource, spelled_out[1]), prefix=spelled_out[0])

    _install_error_handlers(app)
    caching.install(app, services)  # cached GETs answered before routing (innermost middlewares)
    fast_writes.install(app, services)  # and the record writes of the anonymous administrator
    app.add_middleware(BodySizeLimit, limit=services.ctx.settings.max_body_bytes)
    app.add_middleware(HeadAndOptions, router=app.router)
    app.add_middleware(RefuseNul)
    metrics.install(app)  # last: the outermost middleware, so every answer is counted
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ImsError)
    async def _ims_error(_: Request, exc: ImsError) -> JSONResponse:
        return ims_error_response(exc)

    @app.exception_handler(RawHttpError)
    async def _raw_error(_: Request, exc: RawHttpError) -> JSONResponse:
        return raw_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return problem(404, MSG_NOT_FOUND_URL)
        if exc.status_code == 405:
            allow = {"Allow": ", ".join(sorted(allowed_methods(app.router, request.scope)))}
            if request.url.path.startswith(("/healthz", "/version")):
                return JSONResponse({"message": MSG_METHOD}, status_code=405, headers=allow)
            body = {"message": MSG_METHOD, "status": 405, "title": "Method Not Allowed", "detail": MSG_METHOD}
            return JSONResponse(body, status_code=405, headers=allow)
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _query_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors: dict[str, list[str]] = {}
        for error in exc.errors():
            errors.setdefault(str(error.get("loc", ["?"])[-1]), []).append(str(error.get("msg")))
        return problem(400, "Invalid query parameters.", errors)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response()


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        servers=[{"url": "/apis/ims", "description": "Behind the API gateway"}, {"url": "/", "description": "Direct"}],
    )
    schema["info"]["license"] = {"name": "MIT", "identifier": "MIT"}
    app.openapi_schema = auth.document(docs.finish(schema))
    return schema

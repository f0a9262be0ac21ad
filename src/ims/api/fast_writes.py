"""The record writes clients make most, answered before routing.

A create (`POST`), a change (`PATCH`) or a soft delete (`DELETE` under /v3) of one public key, recipe or
image costs the service and the database a small part of its time; FastAPI's routing (every route is tried,
twice), its dependency resolution for the authorizer and its per-route wrappers cost most of the rest. Where
the authorizer has nothing to decide (IMS_AUTH=none and no Authorization header: the caller is the anonymous
administrator), this middleware calls the same parsing, the same use case and the same response builders the
routes call, so the status, the headers and the bytes are the routes' own. Anything else (a job token, OIDC,
a query string, a path or method these routes do not own) goes on to the routes unchanged, and the middlewares
outside this one (size limit, audit, metrics) see every request as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ims.api.auth import ANONYMOUS, CALLER_KEY
from ims.api.deps import Services
from ims.api.http import RawHttpError, ims_error_response, raw_error_response, unexpected_error_response
from ims.api.metrics import ROUTE_KEY
from ims.api.routers import records
from ims.domain.errors import ImsError
from ims.services.records import RecordService

_PATH = re.compile(r"^(/v2|/v3)?/(images|recipes|public-keys)(?:/([^/]+))?$")
_RESOURCES = {resource.path: resource for resource in records.RESOURCES}

# Given the request and the resource's use cases; the record id, where there is one, is bound already.
Operation = Callable[[Request, RecordService], Awaitable[Response]]


def operation(method: str, version: str, path: str, record_id: str | None) -> Operation | None:
    """The route's work for this request, or None where the routes must answer (405s and 404s included)."""
    resource = _RESOURCES[path]
    if record_id is None:
        return records.create_response if method == "POST" else None
    if method == "PATCH" and resource.patch is not None:
        return lambda request, service: records.patch_response(request, service, resource.attr, record_id)
    if method == "DELETE" and version == "/v3":
        # A v2 delete takes ?cascade and deletes the artifacts: the route's.
        return lambda request, service: records.soft_delete_response(service, record_id)
    return None


class FastWrites:
    """Innermost user middleware (beside ims.api.caching.FastReads)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.enabled = services.ctx.settings.auth_mode == "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] not in ("POST", "PATCH", "DELETE")
            or scope.get("query_string")
            or any(name == b"authorization" for name, _ in scope["headers"])
        ):
            await self.app(scope, receive, send)
            return
        match = _PATH.match(scope["path"])
        work = None if match is None else operation(scope["method"], match.group(1) or "", *match.group(2, 3))
        if match is None or work is None:
            await self.app(scope, receive, send)
            return
        prefix, resource, record_id = match.group(1) or "", match.group(2), match.group(3)
        # What the authorizer and the router leave in the scope for the audit line and the metrics.
        scope[CALLER_KEY] = ANONYMOUS
        scope[ROUTE_KEY] = f"{prefix}/{resource}"
        if record_id is not None:
            scope["path_params"] = {"record_id": record_id}
            scope[ROUTE_KEY] += "/{record_id}"
        service: RecordService = getattr(self.services, _RESOURCES[resource].attr)
        response = await _answer(work, Request(scope, receive), service)
        await response(scope, receive, send)


async def _answer(work: Operation, request: Request, service: RecordService) -> Response:
    """The route's answer, its errors answered as the app's exception handlers answer them."""
    try:
        return await work(request, service)
    except ImsError as exc:
        return ims_error_response(exc)
    except RawHttpError as exc:
        return raw_error_response(exc)
    except Exception:
        return unexpected_error_response()


def install(app: FastAPI, services: Services) -> None:
    """Add FastWrites as the innermost user middleware (after the routes, before the app starts)."""
    app.user_middleware.append(Middleware(FastWrites, services=services))  # type: ignore[arg-type]

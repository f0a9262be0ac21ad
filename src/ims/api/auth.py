"""Who is calling and what they may do, decided once per request from the caller and the route.

Callers (docs/auth.md):
- anonymous: IMS_AUTH=none (the default on a loopback address); may do everything;
- an OIDC user (IMS_AUTH=oidc): a bearer JWT from the site's issuer; role admin may do everything, role
  read-only may GET and HEAD;
- a job: its own bearer token (`imsjob_...`, recognised in every mode), with only the rights of
  `job_rights` below.
Everything else is 403 problem+json; a missing (oidc), unknown, revoked, expired or otherwise bad token is
401 with `WWW-Authenticate: Bearer`. The health paths and /version stay anonymous.

One audit line per write (POST, PUT, PATCH, DELETE) goes to the `ims.audit` logger: who, method, path,
record id, status. Never a token.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ims.api.deps import Services
from ims.api.http import problem
from ims.api.oidc import KeysUnavailable, OidcVerifier, TokenRejected
from ims.domain.errors import ImsError
from ims.domain.job_tokens import looks_like_job_token
from ims.services.job_tokens import MAX_RESULT_IMAGES, JobToken, JobTokenService
from ims.services.job_uploads import decode_upload_id
from ims.settings import is_loopback

log = logging.getLogger(__name__)
audit_log = logging.getLogger("ims.audit")

READS = frozenset({"GET", "HEAD"})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CALLER_KEY = "ims.caller"
_REMEMBER_KEY = "ims.remember_image"
_SENT_KEY = "ims.status_sent"
_ANONYMOUS_ROUTES = ("/healthz/", "/version")
_JOB_ARTIFACT_ROUTES = {
    ("GET", "/v3/jobs/{job_id}/input"),
    ("POST", "/v3/jobs/{job_id}/uploads"),
    ("POST", "/v3/jobs/{job_id}/uploads/{upload_id}/parts"),
    ("POST", "/v3/jobs/{job_id}/uploads/{upload_id}/complete"),
    ("DELETE", "/v3/jobs/{job_id}/uploads/{upload_id}"),
}
_ADMIN_ONLY_READS = {"/v3/jobs/{job_id}/input"}  # a presigned URL to an artifact is more than a read
_JOB_PATCH_FIELDS = frozenset({"status", "status_reason", "resultant_image_id"})
_MSG_JOB = (
    "A job token allows only its own job's calls: reading and reporting on its job, creating its result image "
    "and uploading that image's artifacts (docs/auth.md)."
)


@dataclass(frozen=True)
class Caller:
    kind: str  # anonymous, user, job
    name: str  # for the audit line
    admin: bool = False
    read_only: bool = False
    job: JobToken | None = None

    @property
    def audit_name(self) -> str:
        if self.kind == "user":
            role = "admin" if self.admin else "read-only" if self.read_only else "no-role"
            return f"user:{self.name}({role})"
        return self.name


ANONYMOUS = Caller("anonymous", "anonymous", admin=True)


class AuthError(Exception):
    """401 (with a Bearer challenge) or 403, answered as problem+json."""

    def __init__(self, status: int, detail: str, *, token_given: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.token_given = token_given

    def response(self) -> JSONResponse:
        response = problem(self.status, self.detail)
        if self.status == 401:
            challenge = 'Bearer realm="ims"'
            if self.token_given:
                description = self.detail.replace('"', "'").replace("\\", "/")
                challenge += f', error="invalid_token", error_description="{description}"'
            response.headers["WWW-Authenticate"] = challenge
        return response


def _unauthorized(detail: str, token_given: bool) -> AuthError:
    return AuthError(401, detail, token_given=token_given)


def _forbidden(detail: str) -> AuthError:
    return AuthError(403, detail)


def bearer_token(request: Request) -> tuple[bool, str | None]:
    """(whether an Authorization header came, the bearer token in it if it is one)."""
    header = request.headers.get("authorization")
    if header is None:
        return False, None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return True, None
    return True, token.strip()


def strip_version(path: str) -> str:
    for prefix in ("/v2/", "/v3/"):
        if path.startswith(prefix):
            return path[len(prefix) - 1 :]
    return path


def route_template(request: Request) -> str:
    """The matched route's full path template, version prefix included (`/v3/jobs/{job_id}`)."""
    context = (request.scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path_format", None)
    if isinstance(template, str):
        return template
    # Routers are included under a version prefix; the route itself knows only its own part.
    path = str(getattr(request.scope.get("route"), "path", "") or request.url.path)
    if path.startswith(("/v2/", "/v3/")):
        return path
    version = next((prefix for prefix in ("/v2", "/v3") if request.url.path.startswith(prefix + "/")), "")
    return version + path


class Authorizer:
    """The dependency every API route runs first (install() adds it to the app's router)."""

    def __init__(self, services: Services) -> None:
        self.settings = services.ctx.settings
        self.mode = self.settings.auth_mode
        self.tokens = JobTokenService(services.ctx)
        self.oidc = OidcVerifier(self.settings) if self.mode == "oidc" else None

    async def __call__(self, request: Request) -> None:
        template = route_template(request)
        if template.startswith(_ANONYMOUS_ROUTES):
            return
        caller = await self.identify(request)
        request.scope[CALLER_KEY] = caller
        if caller.job is not None:
            await self.job_rights(request, template, caller.job)
        elif caller.admin:
            return
        elif caller.read_only:
            if request.method not in READS or template in _ADMIN_ONLY_READS:
                raise _forbidden("The read-only role may only read (GET, HEAD).")
        else:
            raise _forbidden(
                f"The token carries neither IMS role ({self.settings.oidc_admin_role!r}, "
                f"{self.settings.oidc_read_only_role!r}) in {self.settings.oidc_roles_claim}."
            )

    async def identify(self, request: Request) -> Caller:
        header_given, token = bearer_token(request)
        if token is not None and looks_like_job_token(token):
            job = await run_in_threadpool(self.tokens.authenticate, token)
            if job is None:
                raise _unauthorized("The job token is not valid: unknown, revoked, or its job has ended.", True)
            return Caller("job", f"job:{job.job_id}", job=job)
        if self.oidc is None:
            return ANONYMOUS  # IMS_AUTH=none: any other credential is ignored
        if token is None:
            if header_given:
                raise _unauthorized("Only bearer tokens are accepted (Authorization: Bearer <token>).", True)
            raise _unauthorized("Authentication is required: send Authorization: Bearer <access token>.", False)
        try:
            identity = await self.oidc.identify(token)
        except TokenRejected as exc:
            raise _unauthorized(f"The bearer token was refused: {exc}.", True) from None
        except KeysUnavailable as exc:
            raise AuthError(503, f"Tokens cannot be checked now: {exc}.") from None
        admin = self.settings.oidc_admin_role in identity.roles
        read_only = self.settings.oidc_read_only_role in identity.roles
        return Caller("user", identity.subject, admin=admin, read_only=read_only)

    # --- what a job may do
    async def job_rights(self, request: Request, template: str, job: JobToken) -> None:
        method = request.method
        resource = strip_version(template)
        params = request.path_params
        own_job = params.get("job_id") == job.job_id
        if (method, template) in _JOB_ARTIFACT_ROUTES and own_job:
            return  # the upload service checks that the key is one of the job's own images
        if resource == "/jobs/{job_id}" and own_job:
            if method == "GET":
                return
            if method == "PATCH":
                self._job_patch(await _json_body(request), job)
                return
        if resource == "/images" and method == "POST":
            body = await _json_body(request)
            if isinstance(body, dict) and body.get("link") is not None:
                raise _forbidden(
                    "A job creates its image without a link and sets the link with PATCH after the upload."
                )
            if len(job.result_image_ids) >= MAX_RESULT_IMAGES:
                raise _forbidden(f"A job may create at most {MAX_RESULT_IMAGES} images.")
            request.scope[_REMEMBER_KEY] = job.job_id
            return
        if resource == "/images/{record_id}" and params.get("record_id") in job.result_image_ids:
            if method == "GET":
                return
            if method == "PATCH":
                self._image_patch(await _json_body(request), str(params["record_id"]))
                return
        raise _forbidden(_MSG_JOB)

    @staticmethod
    def _job_patch(body: Any, job: JobToken) -> None:
        if not isinstance(body, dict):
            return  # not a JSON object: the route answers 400/415/422 as for anybody
        extra = sorted(set(body) - _JOB_PATCH_FIELDS)
        if extra:
            raise _forbidden(f"A job may change only status, status_reason and resultant_image_id, not {extra}.")
        if "resultant_image_id" in body and body["resultant_image_id"] not in job.result_image_ids:
            raise _forbidden("A job may set resultant_image_id only to an image it created.")

    def _image_patch(self, body: Any, image_id: str) -> None:
        if not isinstance(body, dict):
            return
        extra = sorted(set(body) - {"link"})
        if extra:
            raise _forbidden(f"A job may change only the link of its image, not {extra}.")
        link = body.get("link")
        if isinstance(link, dict):
            own = f"s3://{self.settings.s3_boot_images_bucket}/{image_id}/"
            path = link.get("path")
            if not isinstance(path, str) or not path.startswith(own) or "/../" in path or path.endswith("/.."):
                raise _forbidden(f"A job may link its image only to an object under {own}.")


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return None  # the route itself answers a body that is not JSON


class AuditMiddleware:
    """One `ims.audit` line per write; also records the image a job created before the job hears of it."""

    def __init__(self, app: ASGIApp, tokens: JobTokenService) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITES:
            await self.app(scope, receive, send)
            return
        status = 500
        created: bytes = b""
        held: list[Message] = []

        async def watch(message: Message) -> None:
            nonlocal status, created
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status == 201 and len(created) < 65536:
                created += message.get("body", b"")
            if scope.get(_REMEMBER_KEY) is None or status != 201:
                await send(message)
                return
            held.append(message)  # a job's new image: remembered before the job sees the answer
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._remember(scope, created, held, send)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._audit(scope, int(scope.get(_SENT_KEY, status)), created)

    async def _remember(self, scope: Scope, body: bytes, held: list[Message], send: Send) -> None:
        job_id = str(scope[_REMEMBER_KEY])
        image_id = _created_id(body)
        try:
            if image_id is None:
                raise ValueError("no id in the created image")
            await run_in_threadpool(self.tokens.remember_image, job_id, image_id)
        except Exception as exc:
            log.error("job %s created image %s but it could not be recorded: %s", job_id, image_id, exc)
            response = problem(503, "The image was created but could not be recorded as the job's; try again.")
            scope[_SENT_KEY] = 503
            await response(scope, _no_body, send)
            return
        for message in held:
            await send(message)

    @staticmethod
    def _audit(scope: Scope, status: int, created: bytes) -> None:
        if not audit_log.isEnabledFor(logging.INFO):
            return  # IMS_LOG_LEVEL above INFO: no line, so nothing to look up for it
        caller = scope.get(CALLER_KEY)
        who = caller.audit_name if isinstance(caller, Caller) else ("unauthenticated" if status == 401 else "-")
        params = scope.get("path_params") or {}
        record = (
            (_created_id(created) if status == 201 else None)
            or params.get("record_id")
            or _upload_key(params.get("upload_id"))
            or params.get("job_id")
        )
        audit_log.info(
            "audit who=%s method=%s path=%s id=%s status=%s",
            who,
            scope["method"],
            scope.get("path", ""),
            record or "-",
            status,
        )


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _created_id(body: bytes) -> str | None:
    try:
        value = orjson.loads(body) if body else None  # our own JSON: the fast parser reads it the same
    except ValueError:
        return None
    if isinstance(value, dict):
        found = value.get("id") or value.get("key")  # a record, or an upload's `<image_id>/<name>`
        return str(found) if found is not None else None
    return None


def _upload_key(upload_id: Any) -> str | None:
    if not isinstance(upload_id, str):
        return None
    try:
        return decode_upload_id(upload_id)[0]
    except ImsError:
        return None


def install(app: FastAPI, services: Services) -> None:
    """Call before the routers are included: every route they add runs the Authorizer first."""
    authorizer = Authorizer(services)
    app.state.authorizer = authorizer
    settings = services.ctx.settings
    if authorizer.mode == "none" and not is_loopback(settings.host):
        log.warning("IMS_AUTH=none on %s: every caller without a job token may do everything", settings.host)
    app.router.dependencies.append(Depends(authorizer))

    async def _auth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        return exc.response()

    app.add_exception_handler(AuthError, _auth_error)
    app.add_middleware(AuditMiddleware, tokens=authorizer.tokens)


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """The security the OpenAPI document states: bearer tokens (OIDC JWTs or job tokens), anonymous health."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "With IMS_AUTH=oidc: an access token (JWT) of the site's issuer with the admin or read-only role. "
            "In every mode: a job's own token (`imsjob_...`), limited to that job. With IMS_AUTH=none (the "
            "default on a loopback address) no token is needed. See docs/auth.md."
        ),
    }
    schema["security"] = [{"bearerAuth": []}, {}]
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    responses = components.setdefault("responses", {})
    responses["Unauthorized"] = {
        "description": "No token (IMS_AUTH=oidc), or an unknown, revoked, expired or badly signed one.",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": '`Bearer realm="ims"`...'}},
        "content": {"application/problem+json": {"schema": problem_ref}},
    }
    responses["Forbidden"] = {
        "description": "The caller's role or job token does not allow this call.",
        "content": {"application/problem+json": {"schema": problem_ref}},
    }
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if path.startswith(_ANONYMOUS_ROUTES):
                operation["security"] = []
                continue
            operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
            operation["responses"]["403"] = {"$ref": "#/components/responses/Forbidden"}
            operation["responses"] = dict(sorted(operation["responses"].items()))
    return schema

"""/jobs: the original's create/list/get/patch/delete, plus list filters and (v3) the job's log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ims.api import docs, models
from ims.api.caching import cached_list, cached_record
from ims.api.deps import Services, call, services
from ims.api.http import no_content, ok, read_json
from ims.api.routers.records import require_record
from ims.domain.jobs import JOB_STATUSES, JOB_TYPES
from ims.domain.validation import INT_MAX
from ims.services.jobs import JobService


def job_service(request: Request) -> JobService:
    return jobs_of(services(request))


def jobs_of(found: Services) -> JobService:
    service = found.extra.get("jobs")
    if service is None:
        service = found.extra.setdefault("jobs", JobService(found.ctx))
    return service  # type: ignore[no-any-return]


def _any_case(words: tuple[str, ...]) -> str:
    """A pattern matching any of the words in any letter case (JSON Schema patterns have no `(?i)`)."""
    alternatives = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word) for word in words)
    return "^(" + "|".join(alternatives) + ")$"


def _document(**rules: Any) -> Callable[[dict[str, Any]], None]:
    """Put value rules into a query parameter's schema (into its array items, whatever wraps them): the
    service checks them itself, with the original's messages, so FastAPI must not."""

    def apply(schema: dict[str, Any]) -> None:
        for option in schema.get("anyOf", [schema]):
            if option.get("type") == "array":
                option["items"] = {**option.get("items", {}), **rules}
            elif option.get("type") == "string":
                option.update(rules)

    return apply


_STATUS_RULE = _document(pattern=_any_case(JOB_STATUSES))


def build(version: str) -> APIRouter:
    router = APIRouter(tags=["jobs"])

    @router.get(
        "/jobs",
        summary="List jobs",
        responses=docs.responses(200, models.JobRecord, many=True, errors=(400,)),
    )
    async def list_jobs(
        request: Request,
        status: list[str] | None = Query(
            None,
            description="Ours: only jobs in these statuses (repeatable; case-insensitive).",
            json_schema_extra=_STATUS_RULE,
        ),
        job_type: str | None = Query(
            None,
            description="Ours: only `create` or `customize` jobs.",
            json_schema_extra=_document(enum=list(JOB_TYPES)),
        ),
        limit: int | None = Query(None, ge=1, le=INT_MAX, description="Ours: at most this many jobs."),
        offset: int = Query(0, ge=0, le=INT_MAX, description="Ours: skip this many jobs first."),
    ) -> Response:
        svc = job_service(request)
        statuses = [str(value) for value in status] if status else None
        key = ("list", tuple(statuses or ()), job_type, limit, offset)
        return await cached_list(request, "jobs", key,
                                 lambda: svc.list(statuses=statuses, job_type=job_type, limit=limit, offset=offset))

    @router.post(
        "/jobs",
        summary="Create a job (image create from a recipe, or customize of an image)",
        status_code=201,
        openapi_extra=docs.body(models.JobInput),
        responses=docs.responses(201, models.JobRecord, errors=(400, 413, 415, 422, 503)),
    )
    async def create_job(request: Request) -> JSONResponse:
        body = await read_json(request)
        return ok(await call(job_service(request).create, body), 201)

    @router.delete(
        "/jobs",
        summary="Delete jobs, filtered by status, job_type and age (all filters must match)",
        status_code=204,
        responses=docs.responses(204, errors=(400,)),
    )
    async def delete_jobs(
        request: Request,
        status: list[str] | None = Query(
            None,
            description="Repeatable; case-insensitive.",
            json_schema_extra=_STATUS_RULE,
        ),
        job_type: str | None = Query(
            None,
            description="`create` or `customize` (case-sensitive; the first counts).",
            json_schema_extra=_document(enum=list(JOB_TYPES)),
        ),
        age: str | None = Query(None, description="Older than this, e.g. `1w`, `2d`, `6h`, `1h30m`."),
    ) -> Response:
        # The original reads only the first `job_type`; FastAPI would hand over the last.
        first_type = request.query_params.getlist("job_type")[0] if job_type is not None else None
        await call(job_service(request).delete_many, status or [], first_type, age)
        return no_content()

    @router.get(
        "/jobs/{job_id}",
        summary="Get a job",
        responses=docs.responses(200, models.JobRecord, errors=(404,)),
    )
    async def get_job(request: Request, job_id: str) -> Response:
        return await cached_record(request, "jobs", job_id)

    @router.patch(
        "/jobs/{job_id}",
        summary="Update a job's status, result or status reason (used by the job itself)",
        openapi_extra=docs.body(models.JobPatch),
        responses=docs.responses(200, models.JobRecord, errors=(400, 404, 413, 415, 422)),
    )
    async def patch_job(request: Request, job_id: str) -> JSONResponse:
        svc = job_service(request)
        await require_record(request, "jobs", svc.get, job_id)
        body = await read_json(request)
        return ok(await call(svc.patch, job_id, body))

    @router.delete(
        "/jobs/{job_id}",
        summary="Delete a job; a running job's processes and work directory go with it",
        status_code=204,
        responses=docs.responses(204, errors=(404,)),
    )
    async def delete_job(request: Request, job_id: str) -> Response:
        await call(job_service(request).delete, job_id)
        return no_content()

    if version == "v3":

        @router.get(
            "/jobs/{job_id}/logs",
            summary="Ours: the job's log (its stages' output); `follow=true` streams it until the job ends",
            response_class=StreamingResponse,
            responses={
                **docs.responses(200, errors=(404,)),
                200: {"description": "The log as text.", "content": {"text/plain": {"schema": {"type": "string"}}}},
            },
        )
        async def job_logs(
            request: Request,
            job_id: str,
            follow: bool = Query(False, description="Keep the response open and send new lines until the job ends."),
        ) -> StreamingResponse:
            body = await call(job_service(request).log_chunks, job_id, follow)
            return StreamingResponse(body, media_type="text/plain; charset=utf-8")

    return router


def mount(app: FastAPI, prefix: str, version: str) -> None:
    """ROUTER_HOOKS entry: the jobs routes under one prefix."""
    app.include_router(build(version), prefix=prefix)

"""/public-keys, /recipes and /images: v2 (also un-prefixed) hard-deletes, v3 soft-deletes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ims.api import docs, models
from ims.api.caching import cached_list, cached_record, response_cache
from ims.api.deps import call, call_batched, services
from ims.api.http import RawHttpError, cascade_flag, no_content, ok, read_json
from ims.domain import schemas
from ims.domain.errors import ImsError
from ims.domain.validation import INT_MAX
from ims.services.records import RecordService


@dataclass(frozen=True)
class Resource:
    path: str
    attr: str
    label: str
    record: type[BaseModel]
    create: type[BaseModel]
    patch: type[BaseModel] | None
    has_artifacts: bool


RESOURCES = (
    Resource("public-keys", "public_keys", "public key", models.PublicKeyRecord, models.PublicKeyInput, None, False),
    Resource("recipes", "recipes", "recipe", models.RecipeRecord, models.RecipeInput, models.RecipePatch, True),
    Resource("images", "images", "image", models.ImageRecord, models.ImageInput, models.ImagePatch, True),
)


async def require_record(
    request: Request, collection: str, get: Callable[..., Any], record_id: str, *, deleted: bool = False
) -> None:
    """404 unless the record exists, before a change's body is looked at (as the original answers). On SQLite
    one raw read on the event loop, tens of µs (a trip through the thread pool costs more than the read);
    elsewhere `get` (the service's) runs in the pool."""
    reads = response_cache(request).reads
    if reads.fast:
        reads.record(collection, record_id, deleted=deleted)
    elif deleted:
        await call(get, record_id, deleted=True)
    else:
        await call(get, record_id)


# The work of the write routes, also called before routing by ims.api.fast_writes: one copy of each.
# The body is validated on the event loop (CPU only, bounded by the body size limit). A write with no link to
# check against S3 then joins the process's current batch of writes (call_batched: on SQLite, run by the loop
# in one transaction with the others); one with a link goes to the thread pool, as its S3 check blocks.
async def create_response(request: Request, service: RecordService) -> JSONResponse:
    record = service.prepare_create(await read_json(request))
    run = call if service.needs_s3(record) else functools.partial(call_batched, service.ctx)
    return ok(await run(service.create_prepared, record), 201)


async def patch_response(request: Request, service: RecordService, collection: str, record_id: str) -> JSONResponse:
    try:
        fields = service.prepare_patch(await read_json(request))
    except (ImsError, RawHttpError):
        # A missing record answers 404 whatever its body, as the original's; a sound body finds it missing in
        # the write itself, without a read before.
        await require_record(request, collection, service.get, record_id)
        raise
    run = call if service.needs_s3(fields) else functools.partial(call_batched, service.ctx)
    return ok(await run(service.patch_prepared, record_id, fields))


async def soft_delete_response(service: RecordService, record_id: str) -> Response:
    await call_batched(service.ctx, service.soft_delete, record_id)
    return no_content()


def build(resource: Resource, version: str) -> APIRouter:
    router = APIRouter(tags=[resource.path])
    soft = version == "v3"
    base = f"/{resource.path}"

    def service(request: Request) -> RecordService:
        found: RecordService = getattr(services(request), resource.attr)
        return found

    @router.get(
        base,
        summary=f"List {resource.label} records",
        responses=docs.responses(200, resource.record, many=True, errors=(400,)),
    )
    async def list_records(
        request: Request,
        limit: int | None = Query(None, ge=1, le=INT_MAX, description="Ours: at most this many records."),
        offset: int = Query(0, ge=0, le=INT_MAX, description="Ours: skip this many records first."),
    ) -> Response:
        svc = service(request)
        return await cached_list(request, resource.attr, ("list", limit, offset),
                                 lambda: svc.list(limit=limit, offset=offset))

    @router.post(
        base,
        summary=f"Create a {resource.label} record",
        status_code=201,
        openapi_extra=docs.body(resource.create),
        responses=docs.responses(201, resource.record, errors=(400, 413, 415, 422)),
    )
    async def create_record(request: Request) -> JSONResponse:
        return await create_response(request, service(request))

    delete_all_doc = "Soft-delete every record (see /v3/deleted)" if soft else "Delete every record"

    @router.delete(base, summary=delete_all_doc, status_code=204, responses=docs.responses(204))
    async def delete_records(
        request: Request,
        cascade: str | None = Query(None, description="v2: also delete the S3 artifacts (default true)."),
    ) -> Response:
        if soft:
            await call(service(request).soft_delete_all)
        else:
            await call(service(request).hard_delete_all, cascade=cascade_flag(cascade))
        return no_content()

    @router.get(
        base + "/{record_id}",
        summary=f"Get a {resource.label} record",
        responses=docs.responses(200, resource.record, errors=(404,)),
    )
    async def get_record(request: Request, record_id: str) -> Response:
        return await cached_record(request, resource.attr, record_id)

    @router.delete(
        base + "/{record_id}",
        summary=f"{'Soft-delete' if soft else 'Delete'} a {resource.label} record",
        status_code=204,
        responses=docs.responses(204, errors=(404,)),
    )
    async def delete_record(
        request: Request,
        record_id: str,
        cascade: str | None = Query(None, description="v2: also delete the S3 artifacts (default true)."),
    ) -> Response:
        if soft:
            return await soft_delete_response(service(request), record_id)
        await call(service(request).hard_delete, record_id, cascade=cascade_flag(cascade))
        return no_content()

    if resource.patch is not None:

        @router.patch(
            base + "/{record_id}",
            summary=f"Update a {resource.label} record",
            openapi_extra=docs.body(resource.patch),
            responses=docs.responses(200, resource.record, errors=(400, 404, 409, 413, 415, 422)),
        )
        async def patch_record(request: Request, record_id: str) -> JSONResponse:
            return await patch_response(request, service(request), resource.attr, record_id)

    return router


def build_deleted(resource: Resource) -> APIRouter:
    """/v3/deleted/<resource>: list, get, undelete, purge."""
    router = APIRouter(tags=[f"deleted {resource.path}"])
    base = f"/deleted/{resource.path}"
    deleted_models: dict[str, type[BaseModel]] = {
        "public-keys": models.DeletedPublicKeyRecord,
        "recipes": models.DeletedRecipeRecord,
        "images": models.DeletedImageRecord,
    }
    deleted_model = deleted_models[resource.path]

    def service(request: Request) -> RecordService:
        found: RecordService = getattr(services(request), resource.attr)
        return found

    @router.get(base, summary=f"List deleted {resource.label} records",
                responses=docs.responses(200, deleted_model, many=True))
    async def list_deleted(
        request: Request,
        limit: int | None = Query(None, ge=1, le=INT_MAX),
        offset: int = Query(0, ge=0, le=INT_MAX),
    ) -> Response:
        svc = service(request)
        return await cached_list(request, resource.attr, ("deleted-list", limit, offset),
                                 lambda: svc.list(deleted=True, limit=limit, offset=offset), record_key="deleted-get")

    @router.patch(base, summary=f"Undelete every deleted {resource.label} record", status_code=204,
                  openapi_extra=docs.body(models.UndeleteInput),
                  responses=docs.responses(204, errors=(400, 415, 422)))
    async def undelete_all(request: Request) -> Response:
        body = await read_json(request)
        schemas.load_input(schemas.UndeleteInput, body)
        await call(service(request).undelete_all)
        return no_content()

    @router.delete(base, summary=f"Permanently delete every deleted {resource.label} record", status_code=204,
                   responses=docs.responses(204))
    async def purge_all(request: Request) -> Response:
        await call(service(request).purge_all)
        return no_content()

    @router.get(base + "/{record_id}", summary=f"Get a deleted {resource.label} record",
                responses=docs.responses(200, deleted_model, errors=(404,)))
    async def get_deleted(request: Request, record_id: str) -> Response:
        return await cached_record(request, resource.attr, record_id, deleted=True)

    @router.patch(base + "/{record_id}", summary=f"Undelete a {resource.label} record", status_code=204,
                  openapi_extra=docs.body(models.UndeleteInput),
                  responses=docs.responses(204, errors=(400, 404, 415, 422)))
    async def undelete_one(request: Request, record_id: str) -> Response:
        svc = service(request)
        await require_record(request, resource.attr, svc.get, record_id, deleted=True)
        body = await read_json(request)
        schemas.load_input(schemas.UndeleteInput, body)
        await call(svc.undelete, record_id)
        return no_content()

    @router.delete(base + "/{record_id}", summary=f"Permanently delete a deleted {resource.label} record",
                   status_code=204, responses=docs.responses(204, errors=(404,)))
    async def purge_one(request: Request, record_id: str) -> Response:
        await call(service(request).purge, record_id)
        return no_content()

    return router

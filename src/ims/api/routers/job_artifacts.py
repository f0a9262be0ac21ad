"""Ours (/v3): a job's input and its result uploads through presigned URLs (ims.services.job_uploads).

Called by the job itself with its token (ims.api.auth), or by an admin.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ims.api import docs
from ims.api.deps import call, services
from ims.api.http import no_content, ok, read_json
from ims.services.job_uploads import JobUploadService


class JobInputUrl(BaseModel):
    url: str = Field(description="A presigned GET of the job's input (its recipe archive or its image's rootfs).")
    md5: str = Field(description="The input's md5 as IMS knows it, or an empty string.")
    path: str = Field(description="The input as `s3://bucket/key`.")


class JobUploadStart(BaseModel):
    image_id: str = Field(description="An image this job created (POST /images with its token).")
    name: str = Field(
        description="The object's name under `<image_id>/`: rootfs, kernel, initrd, boot_parameters, debug_kernel, "
        "manifest.json, or the job's kernel/initrd/kernel-parameters file names."
    )
    content_type: str | None = Field(None, description="The object's Content-Type (default application/octet-stream).")


class JobUploadStarted(BaseModel):
    upload_id: str
    bucket: str
    key: str


class JobUploadPartNumbers(BaseModel):
    part_numbers: list[int] = Field(min_length=1, max_length=100, description="Part numbers, 1 to 10000.")


class JobUploadPartUrl(BaseModel):
    part_number: int
    url: str = Field(description="A presigned UploadPart PUT; PUT the same part again to replace it.")


class JobUploadPartUrls(BaseModel):
    part_urls: list[JobUploadPartUrl]


class JobUploadPart(BaseModel):
    part_number: int = Field(ge=1, le=10000)
    etag: str = Field(description="The ETag header the part's PUT answered with.")


class JobUploadComplete(BaseModel):
    parts: list[JobUploadPart] = Field(min_length=1)
    md5sum: str = Field(description="The md5 of the whole object (hex); set as the object's `md5sum` metadata.")
    metadata: dict[str, str] | None = Field(None, description="More object metadata, e.g. `x-shasta-ims-image-id`.")


class JobUploadDone(BaseModel):
    bucket: str
    key: str
    etag: str
    size: int


def upload_service(request: Request) -> JobUploadService:
    found = services(request)
    service = found.extra.get("job_uploads")
    if service is None:
        service = found.extra.setdefault("job_uploads", JobUploadService(found.ctx))
    return service  # type: ignore[no-any-return]


def build() -> APIRouter:
    router = APIRouter(tags=["jobs"])
    base = "/jobs/{job_id}"

    @router.get(
        base + "/input",
        summary="Ours: a presigned GET of the job's input artifact",
        responses=docs.responses(200, JobInputUrl, errors=(404, 503)),
    )
    async def job_input(request: Request, job_id: str) -> JSONResponse:
        return ok(await call(upload_service(request).input, job_id))

    @router.post(
        base + "/uploads",
        summary="Ours: start a multipart upload of one artifact of an image the job created",
        status_code=201,
        openapi_extra=docs.body(JobUploadStart),
        responses=docs.responses(201, JobUploadStarted, errors=(400, 404, 415, 422, 503)),
    )
    async def start_upload(request: Request, job_id: str) -> JSONResponse:
        body = await read_json(request)
        return ok(await call(upload_service(request).start, job_id, body), 201)

    @router.post(
        base + "/uploads/{upload_id}/parts",
        summary="Ours: presigned UploadPart URLs for some parts of an upload",
        openapi_extra=docs.body(JobUploadPartNumbers),
        responses=docs.responses(200, JobUploadPartUrls, errors=(400, 404, 415, 422, 503)),
    )
    async def upload_parts(request: Request, job_id: str, upload_id: str) -> JSONResponse:
        body = await read_json(request)
        return ok(await call(upload_service(request).part_urls, job_id, upload_id, body))

    @router.post(
        base + "/uploads/{upload_id}/complete",
        summary="Ours: complete an upload and set the object's md5sum metadata",
        openapi_extra=docs.body(JobUploadComplete),
        responses=docs.responses(200, JobUploadDone, errors=(400, 404, 415, 422, 503)),
    )
    async def complete_upload(request: Request, job_id: str, upload_id: str) -> JSONResponse:
        body = await read_json(request)
        return ok(await call(upload_service(request).complete, job_id, upload_id, body))

    @router.delete(
        base + "/uploads/{upload_id}",
        summary="Ours: abort an upload (its parts are dropped)",
        status_code=204,
        responses=docs.responses(204, errors=(404, 503)),
    )
    async def abort_upload(request: Request, job_id: str, upload_id: str) -> Response:
        await call(upload_service(request).abort, job_id, upload_id)
        return no_content()

    return router

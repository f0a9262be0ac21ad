"""/v3/remote-build-nodes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ims.api import docs, models
from ims.api.deps import call, services
from ims.api.http import no_content, ok, read_json


class RemoteBuildNodePublicKey(BaseModel):
    public_key: str = Field(description="One authorized_keys line: IMS's key for root on the nodes.")


def build() -> APIRouter:
    router = APIRouter(tags=["remote-build-nodes"])
    base = "/remote-build-nodes"

    @router.get(base, summary="List remote build nodes",
                responses=docs.responses(200, models.RemoteBuildNodeRecord, many=True))
    async def list_nodes(request: Request) -> JSONResponse:
        return ok(await call(services(request).remote_nodes.list))

    @router.post(base, summary="Register (or re-register) a remote build node", status_code=201,
                 openapi_extra=docs.body(models.RemoteBuildNodeInput),
                 responses=docs.responses(201, models.RemoteBuildNodeRecord, errors=(400, 415, 422)))
    async def create_node(request: Request) -> JSONResponse:
        body = await read_json(request)
        return ok(await call(services(request).remote_nodes.create, body), 201)

    @router.delete(base, summary="Remove every remote build node", status_code=204,
                   responses=docs.responses(204))
    async def delete_nodes(request: Request) -> Response:
        await call(services(request).remote_nodes.delete_all)
        return no_content()

    # Live probes over SSH run as asyncio subprocesses, not on the worker threads (docs/remote-nodes.md).
    @router.get(base + "/status", summary="Status of every remote build node (probed live over SSH)",
                responses=docs.responses(200, models.RemoteBuildNodeStatus, many=True))
    async def status_all(request: Request) -> JSONResponse:
        return ok(await services(request).remote_nodes.status_all_async())

    @router.get(base + "/status/{xname}", summary="Status of one remote build node (probed live over SSH)",
                responses=docs.responses(200, models.RemoteBuildNodeStatus, errors=(404, 422)))
    async def status_one(request: Request, xname: str) -> JSONResponse:
        return ok(await services(request).remote_nodes.status_async(xname))

    @router.get(base + "/public-key", summary="IMS's SSH public key, for the nodes' root authorized_keys (ours)",
                responses=docs.responses(200, RemoteBuildNodePublicKey))
    async def public_key(request: Request) -> JSONResponse:
        return ok(await call(services(request).remote_nodes.public_key))

    @router.get(base + "/{xname}", summary="Get a remote build node",
                responses=docs.responses(200, models.RemoteBuildNodeRecord, errors=(404,)))
    async def get_node(request: Request, xname: str) -> JSONResponse:
        return ok(await call(services(request).remote_nodes.get, xname))

    @router.delete(base + "/{xname}", summary="Remove a remote build node", status_code=204,
                   responses=docs.responses(204, errors=(404,)))
    async def delete_node(request: Request, xname: str) -> Response:
        await call(services(request).remote_nodes.delete, xname)
        return no_content()

    return router

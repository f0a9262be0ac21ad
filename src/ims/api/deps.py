"""Access to the use cases from a request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ims.services.context import ServiceContext
from ims.services.records import ImageService, PublicKeyService, RecipeService
from ims.services.remote_nodes import RemoteNodeService

T = TypeVar("T")


@dataclass
class Services:
    ctx: ServiceContext
    public_keys: PublicKeyService
    recipes: RecipeService
    images: ImageService
    remote_nodes: RemoteNodeService
    extra: dict[str, Any]

    @classmethod
    def build(cls, ctx: ServiceContext) -> Services:
        return cls(
            ctx, PublicKeyService(ctx), RecipeService(ctx), ImageService(ctx), RemoteNodeService(ctx), extra={}
        )


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking use case off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)

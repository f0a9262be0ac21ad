"""Job tokens for the API: who a bearer `imsjob_...` token is, and the images that job created."""

from __future__ import annotations

from ims.services.context import ServiceContext
from ims.store import job_tokens
from ims.store.job_tokens import MAX_RESULT_IMAGES, JobToken

__all__ = ["MAX_RESULT_IMAGES", "JobToken", "JobTokenService"]


class JobTokenService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def authenticate(self, token: str) -> JobToken | None:
        """The job a token belongs to while the token is valid; None for an unknown or revoked one."""
        with self.ctx.database.read() as conn:
            return job_tokens.lookup(conn, token)

    def remember_image(self, job_id: str, image_id: str) -> None:
        """An image the job created (its result): the job may read, link and upload to it."""
        with self.ctx.database.write() as conn:
            job_tokens.add_result_image(conn, job_id, image_id)

    def result_images(self, job_id: str) -> list[str]:
        with self.ctx.database.read() as conn:
            return job_tokens.result_images(conn, job_id)

"""Per-job bearer tokens: `imsjob_` + 43 url-safe characters, stored only as their sha256.

A job's row in `job_tokens` is made with the job; the worker mints the token it hands to the job at
launch (a fresh one at every launch, as the download URL is signed anew), so the plain token exists only
in the job's environment. A token is valid while it is not revoked and its job exists, is not deleted and
has not reached `success` or `error`; it is revoked when the job reaches one of those or is deleted.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from ims.domain.job_tokens import PREFIX, TOKEN_LENGTH, looks_like_job_token
from ims.domain.jobs import FINAL_STATUSES
from ims.domain.timeutil import utcnow
from ims.store.tables import job_tokens as table
from ims.store.tables import jobs

# A job creates one result image; a few more allow for retries, not for filling the store.
MAX_RESULT_IMAGES = 16


@dataclass(frozen=True)
class JobToken:
    job_id: str
    result_image_ids: tuple[str, ...]


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create(conn: Connection, job_id: str) -> None:
    """The job's token row, made with the job (its token is minted at launch by `issue`)."""
    conn.execute(
        insert(table).values(
            job_id=job_id, token_hash=hash_token(new_token()), created=utcnow(), revoked=None, result_image_ids=[]
        )
    )


def issue(conn: Connection, job_id: str) -> str | None:
    """Mint the token handed to the job now; any earlier one stops working. None when it was revoked."""
    token = new_token()
    row = conn.execute(select(table.c.revoked).where(table.c.job_id == job_id)).first()
    if row is None:
        conn.execute(
            insert(table).values(
                job_id=job_id, token_hash=hash_token(token), created=utcnow(), revoked=None, result_image_ids=[]
            )
        )
        return token
    if row.revoked is not None:
        return None
    conn.execute(update(table).where(table.c.job_id == job_id).values(token_hash=hash_token(token)))
    return token


def revoke(conn: Connection, job_id: str) -> None:
    conn.execute(update(table).where(table.c.job_id == job_id, table.c.revoked.is_(None)).values(revoked=utcnow()))


def lookup(conn: Connection, token: str) -> JobToken | None:
    """The job a token belongs to, if the token is valid now."""
    if not looks_like_job_token(token) or len(token) != TOKEN_LENGTH:
        return None
    query = (
        select(table.c.job_id, table.c.revoked, table.c.result_image_ids, jobs.c.status, jobs.c.deleted)
        .join(jobs, jobs.c.id == table.c.job_id)
        .where(table.c.token_hash == hash_token(token))
    )
    row = conn.execute(query).first()
    if row is None or row.revoked is not None or row.deleted is not None or row.status in FINAL_STATUSES:
        return None
    return JobToken(str(row.job_id), tuple(_ids(row.result_image_ids)))


def result_images(conn: Connection, job_id: str) -> list[str]:
    row = conn.execute(select(table.c.result_image_ids).where(table.c.job_id == job_id)).first()
    return _ids(row.result_image_ids) if row is not None else []


def add_result_image(conn: Connection, job_id: str, image_id: str) -> None:
    query = select(table.c.result_image_ids).where(table.c.job_id == job_id).with_for_update()
    row = conn.execute(query).first()
    if row is None:
        return
    ids = _ids(row.result_image_ids)
    if image_id not in ids:
        conn.execute(update(table).where(table.c.job_id == job_id).values(result_image_ids=[*ids, image_id]))


def _ids(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []

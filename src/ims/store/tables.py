"""Tables. Each record keeps its wire body in `data`; columns hold what is queried or constrained."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

JsonType = JSON().with_variant(JSONB(), "postgresql")


def _record_table(name: str, *extra: Column) -> Table:  # type: ignore[type-arg]
    return Table(
        name,
        metadata,
        Column("id", String(128), primary_key=True),
        Column("created", DateTime, nullable=False, index=True),
        # NULL while active; the time of the soft delete otherwise.
        Column("deleted", DateTime, nullable=True, index=True),
        Column("data", JsonType, nullable=False),
        *extra,
    )


public_keys = _record_table("public_keys")
recipes = _record_table(
    "recipes",
    Column("link_path", Text, nullable=True, index=True),
    Column("restore_link", JsonType, nullable=True),
)
images = _record_table(
    "images",
    Column("link_path", Text, nullable=True, index=True),
    Column("restore_link", JsonType, nullable=True),
)
jobs = _record_table(
    "jobs",
    Column("status", String(32), nullable=False, index=True),
    Column("job_type", String(16), nullable=False),
    # Orchestration (ims.jobs): queued -> starting -> running -> done. Rows written by other code
    # (imports of the original's files) default to `done` so they are never launched.
    Column("phase", String(16), nullable=False, default="done", server_default="done", index=True),
    Column("owner", String(128), nullable=True, index=True),  # the worker that watches the job
    Column("lease_until", DateTime, nullable=True),  # the owner renews this while the job's process lives
    Column("heartbeat", DateTime, nullable=True),
    Column("status_changed", DateTime, nullable=True),
    Column("ssh_port", Integer, nullable=True),
    Column("runner", JsonType, nullable=True),  # the runner's handle: host, pid, start time, job directory
    Column("launch", JsonType, nullable=True),  # what the runner needs beyond the record (no secrets)
)
remote_build_nodes = _record_table("remote_build_nodes")
# Per node: its host keys, trusted on first use, and why IMS refuses it (a changed host key).
remote_build_node_state = Table(
    "remote_build_node_state",
    metadata,
    Column("xname", String(255), primary_key=True),
    Column("host_keys", Text, nullable=True),
    Column("unusable_reason", Text, nullable=True),
    Column("updated", DateTime, nullable=False),
)

# A job's bearer token, only as its sha256 (ims.store.job_tokens); it goes with the job's row.
job_tokens = Table(
    "job_tokens",
    metadata,
    Column("job_id", String(128), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True, index=True),
    Column("created", DateTime, nullable=False),
    Column("revoked", DateTime, nullable=True),
    Column("result_image_ids", JsonType, nullable=False),  # images the job created (POST /images)
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(64), nullable=False),
    # Tasks on the same resource run one at a time, in the order they were queued.
    Column("resource", String(200), nullable=False, index=True),
    Column("payload", JsonType, nullable=False),
    Column("state", String(16), nullable=False, index=True),  # pending, running, done, failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_until", DateTime, nullable=True),
    Column("created", DateTime, nullable=False),
    Column("updated", DateTime, nullable=False),
    Column("last_error", Text, nullable=True),
)

# One row per record table; a trigger bumps `version` in every transaction that changes what the API shows of
# that table (migration 0004), so caches of encoded responses know when they are stale, in any process.
collection_versions = Table(
    "collection_versions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False, server_default="0"),
)

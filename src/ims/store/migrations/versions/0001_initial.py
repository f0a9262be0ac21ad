"""Initial schema: records, soft-delete columns, the task queue.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(JSONB(), "postgresql")


def _record_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("deleted", sa.DateTime, nullable=True),
        sa.Column("data", _json, nullable=False),
    ]


def _indexes(table: str) -> None:
    op.create_index(f"ix_{table}_created", table, ["created"])
    op.create_index(f"ix_{table}_deleted", table, ["deleted"])


def upgrade() -> None:
    op.create_table("public_keys", *_record_columns())
    _indexes("public_keys")
    for table in ("recipes", "images"):
        op.create_table(
            table,
            *_record_columns(),
            sa.Column("link_path", sa.Text, nullable=True),
            sa.Column("restore_link", _json, nullable=True),
        )
        _indexes(table)
        op.create_index(f"ix_{table}_link_path", table, ["link_path"])
    op.create_table(
        "jobs",
        *_record_columns(),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("job_type", sa.String(16), nullable=False),
    )
    _indexes("jobs")
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table("remote_build_nodes", *_record_columns())
    _indexes("remote_build_nodes")
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(200), nullable=False),
        sa.Column("payload", _json, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("updated", sa.DateTime, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_tasks_resource", "tasks", ["resource"])
    op.create_index("ix_tasks_state", "tasks", ["state"])


def downgrade() -> None:
    for table in ("tasks", "remote_build_nodes", "jobs", "images", "recipes", "public_keys"):
        op.drop_table(table)

"""Per-job tokens (hashed), for jobs that call IMS without admin credentials.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_tokens",
        sa.Column("job_id", sa.String(128), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("revoked", sa.DateTime, nullable=True),
        sa.Column("result_image_ids", _json, nullable=False),
    )
    op.create_index("ix_job_tokens_token_hash", "job_tokens", ["token_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_job_tokens_token_hash", "job_tokens")
    op.drop_table("job_tokens")

"""Job orchestration: which worker runs a job, its lease and runner handle, its SSH port.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    # Rows that exist already (imported from the original's files) never run here: default `done`.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("phase", sa.String(16), nullable=False, server_default="done"))
        batch.add_column(sa.Column("owner", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("heartbeat", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("status_changed", sa.DateTime, nullable=True))
        batch.add_column(sa.Column("ssh_port", sa.Integer, nullable=True))
        batch.add_column(sa.Column("runner", _json, nullable=True))
        batch.add_column(sa.Column("launch", _json, nullable=True))
    op.create_index("ix_jobs_phase", "jobs", ["phase"])
    op.create_index("ix_jobs_owner", "jobs", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner", "jobs")
    op.drop_index("ix_jobs_phase", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in ("launch", "runner", "ssh_port", "status_changed", "heartbeat", "lease_until", "owner", "phase"):
            batch.drop_column(name)

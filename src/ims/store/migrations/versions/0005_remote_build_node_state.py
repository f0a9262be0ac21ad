"""Remote build nodes: trusted host keys and whether a node may be used.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remote_build_node_state",
        sa.Column("xname", sa.String(255), primary_key=True),
        # known_hosts lines of the node's host keys, trusted on first contact; NULL until then.
        sa.Column("host_keys", sa.Text, nullable=True),
        # Why IMS refuses the node (a changed host key); NULL while it may be used.
        sa.Column("unusable_reason", sa.Text, nullable=True),
        sa.Column("updated", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("remote_build_node_state")

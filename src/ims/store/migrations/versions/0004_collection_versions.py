"""Collection versions, so list responses can be cached and given ETags across processes.

One row per record table, its `version` bumped by a trigger in the same transaction as every insert, delete
and update of a column the API shows (id, created, deleted, data). Triggers, not application code, so no
writer can forget it: the API, the task and job workers, imports, other replicas, a hand-written UPDATE.
The jobs worker's own bookkeeping (owner, lease, heartbeat, runner) changes no version.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLLECTIONS = ("public_keys", "recipes", "images", "jobs", "remote_build_nodes")
_SHOWN = "id, created, deleted, data"
_BUMP = "UPDATE collection_versions SET version = version + 1 WHERE name = '{table}';"


def upgrade() -> None:
    op.create_table(
        "collection_versions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.bulk_insert(
        sa.table("collection_versions", sa.column("name", sa.String), sa.column("version", sa.BigInteger)),
        [{"name": name, "version": 0} for name in COLLECTIONS],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION ims_bump_collection_version() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "UPDATE collection_versions SET version = version + 1 WHERE name = TG_TABLE_NAME; RETURN NULL; END $$"
        )
        for table in COLLECTIONS:
            # Once per statement: a collection-wide soft delete bumps once, not once per row.
            op.execute(
                f"CREATE TRIGGER {table}_version AFTER INSERT OR DELETE OR UPDATE OF {_SHOWN} ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ims_bump_collection_version()"
            )
        return
    for table in COLLECTIONS:
        bump = _BUMP.format(table=table)
        op.execute(f"CREATE TRIGGER {table}_version_insert AFTER INSERT ON {table} BEGIN {bump} END")
        op.execute(f"CREATE TRIGGER {table}_version_delete AFTER DELETE ON {table} BEGIN {bump} END")
        op.execute(f"CREATE TRIGGER {table}_version_update AFTER UPDATE OF {_SHOWN} ON {table} BEGIN {bump} END")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in COLLECTIONS:
        if postgresql:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_version ON {table}")
        else:
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_version_{event}")
    if postgresql:
        op.execute("DROP FUNCTION IF EXISTS ims_bump_collection_version()")
    op.drop_table("collection_versions")

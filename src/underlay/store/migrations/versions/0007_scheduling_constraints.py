"""scheduling constraints: node labels; job app, max_per_node, node_selector, preemptible

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Recreating a table on SQLite must keep AUTOINCREMENT (0003, 0004): ids are never reused.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.Text(), nullable=False, server_default="[]"))
    with op.batch_alter_table("jobs", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.add_column(
            sa.Column("preemptible", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("app", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("max_per_node", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("node_selector", sa.Text(), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("node_selector")
        batch_op.drop_column("max_per_node")
        batch_op.drop_column("app")
        batch_op.drop_column("preemptible")
    with op.batch_alter_table("nodes", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("labels")

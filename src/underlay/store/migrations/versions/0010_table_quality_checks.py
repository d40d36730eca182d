"""table quality checks and version status

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Recreating a table on SQLite must keep AUTOINCREMENT (0003, 0004): ids are never reused.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("data_tables", table_kwargs=KEEP) as batch_op:
        batch_op.add_column(sa.Column("checks", sa.Text(), nullable=True))
    with op.batch_alter_table("data_table_versions", table_kwargs=KEEP) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="published")
        )
        batch_op.add_column(
            sa.Column("quality_report", sa.Text(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("data_table_versions", table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("quality_report")
        batch_op.drop_column("status")
    with op.batch_alter_table("data_tables", table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("checks")

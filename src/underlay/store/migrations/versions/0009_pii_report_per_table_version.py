"""pii report per table version

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Recreating a table on SQLite must keep AUTOINCREMENT (0003, 0004): ids are never reused.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("data_table_versions", table_kwargs=KEEP) as batch_op:
        batch_op.add_column(
            sa.Column("pii_report", sa.Text(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("data_table_versions", table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("pii_report")

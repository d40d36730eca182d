"""token kinds (user, job, agent), job tokens sealed per attempt, node isolation

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

from underlay.store.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# Recreating a table on SQLite must keep AUTOINCREMENT (0003): ids are never reused.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="user")
        )
        batch_op.add_column(sa.Column("project_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("node", sa.String(length=128), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_tokens_project_id"), ["project_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_api_tokens_project_id_projects"),
            "projects",
            ["project_id"],
            ["id"],
            ondelete="CASCADE",
        )
    with op.batch_alter_table("job_attempts", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.add_column(sa.Column("token_sealed", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("nodes", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.add_column(
            sa.Column("isolation", sa.String(length=32), nullable=False, server_default="none")
        )
    # Tokens minted for jobs before kinds existed acted with their user's full rights.
    tokens = sa.table(
        "api_tokens",
        sa.column("name", sa.String()),
        sa.column("revoked_at", UTCDateTime(timezone=True)),
    )
    op.execute(
        tokens.update()
        .where(tokens.c.name.like("job-%"), tokens.c.revoked_at.is_(None))
        .values(revoked_at=dt.datetime.now(dt.UTC))
    )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("isolation")
    with op.batch_alter_table("job_attempts", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("token_sealed")
    with op.batch_alter_table("api_tokens", schema=None, table_kwargs=KEEP) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_api_tokens_project_id_projects"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_api_tokens_project_id"))
        batch_op.drop_column("node")
        batch_op.drop_column("project_id")
        batch_op.drop_column("kind")

"""table watermarks and data subjects

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Recreating a table on SQLite must keep AUTOINCREMENT (0003, 0004): ids are never reused.
KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    op.create_table(
        "data_table_subjects",
        sa.Column("table_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_data_table_subjects_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["table_id"],
            ["data_tables.id"],
            name=op.f("fk_data_table_subjects_table_id_data_tables"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "table_id", "version", "subject", name=op.f("pk_data_table_subjects")
        ),
    )
    with op.batch_alter_table("data_table_subjects", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_data_table_subjects_project_id"), ["project_id"], unique=False
        )
        batch_op.create_index(
            "ix_data_table_subjects_project_subject", ["project_id", "subject"], unique=False
        )
    with op.batch_alter_table("data_tables", table_kwargs=KEEP) as batch_op:
        batch_op.add_column(sa.Column("subject_key", sa.String(length=63), nullable=True))
    with op.batch_alter_table("data_table_versions", table_kwargs=KEEP) as batch_op:
        batch_op.add_column(sa.Column("watermark", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("data_table_versions", table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("watermark")
    with op.batch_alter_table("data_tables", table_kwargs=KEEP) as batch_op:
        batch_op.drop_column("subject_key")
    with op.batch_alter_table("data_table_subjects", schema=None) as batch_op:
        batch_op.drop_index("ix_data_table_subjects_project_subject")
        batch_op.drop_index(batch_op.f("ix_data_table_subjects_project_id"))
    op.drop_table("data_table_subjects")

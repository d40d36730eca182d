"""monotonic ids: SQLite tables get AUTOINCREMENT

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Without ``AUTOINCREMENT`` SQLite gives a new row ``max(id) + 1``, so deleting the newest
project, job or attempt hands its id to the next one (and with it whatever is keyed by the
id outside the row: log files, blob folders, alerts). Each table is recreated with
``INTEGER PRIMARY KEY AUTOINCREMENT``, its rows copied with their ids (Alembic batch mode,
``recreate="always"``); ``sqlite_sequence`` then starts above the highest id still referenced
anywhere, including by rows a delete left behind, which are removed. PostgreSQL's sequences
are monotonic already: nothing to do there.

``env.py`` switches SQLite's foreign keys off around migrations, since dropping the old copy
of a referenced table would otherwise cascade-delete its children; the check at the end
proves every reference still resolves.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = (
    "users",
    "projects",
    "memberships",
    "api_tokens",
    "login_failures",
    "blobs",
    "audit_entries",
    "lineage_edges",
    "nodes",
    "accelerators",
    "jobs",
    "job_attempts",
    "quotas",
    "budgets",
    "alerts",
)

# ids that rows without a foreign key may still hold after their parent was deleted
_REFERENCES = {
    "projects": (("alerts", "project_id"), ("job_attempts", "project_id")),
    "jobs": (("alerts", "job_id"), ("job_attempts", "job_id")),
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    for table, references in _REFERENCES.items():
        highest = [bind.execute(sa.text(f"SELECT max(id) FROM {table}")).scalar() or 0]  # noqa: S608 - fixed names
        for other, column in references:
            highest.append(
                bind.execute(sa.text(f"SELECT max({column}) FROM {other}")).scalar() or 0  # noqa: S608
            )
        if max(highest):
            bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :n)"),
                {"t": table, "n": max(highest)},
            )
    # what earlier deletes of a project left behind (no foreign key held these rows)
    bind.execute(
        sa.text(
            "DELETE FROM alerts WHERE project_id IS NOT NULL "
            "AND project_id NOT IN (SELECT id FROM projects)"
        )
    )
    bind.execute(sa.text("DELETE FROM job_attempts WHERE job_id NOT IN (SELECT id FROM jobs)"))
    broken = bind.execute(sa.text("PRAGMA foreign_key_check")).fetchall()
    if broken:
        raise RuntimeError(f"foreign keys broken by the table copy: {broken[:5]}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass

"""metric points stored in chunks: one row per key and batch, the points packed as arrays

Revision ID: 0019
Revises: 0017
Create Date: 2026-12-06

The points already stored move into chunks of at most 100,000 points of a key, in step order;
a downgrade unpacks them into one row per point again.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0017"
branch_labels = None
depends_on = None

CHUNK_POINTS = 100_000
_STEP = np.dtype("<i8")
_VALUE = np.dtype("<f8")


def _chunks_table() -> sa.TableClause:
    return sa.table(
        "metric_chunks",
        *(
            sa.column(name)
            for name in (
                "run_id",
                "key",
                "first_step",
                "last_step",
                "points",
                "step_bytes",
                "value_bytes",
                "timestamp_bytes",
                "project_id",
            )
        ),
    )


def _metrics_table() -> sa.TableClause:
    return sa.table(
        "metrics",
        *(sa.column(n) for n in ("run_id", "key", "step", "value", "timestamp", "project_id")),
    )


def upgrade() -> None:
    op.create_table(
        "metric_chunks",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("first_step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("step_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("value_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp_bytes", sa.LargeBinary(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_metric_chunks_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metric_chunks_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", "first_step", name=op.f("pk_metric_chunks")),
    )
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_metric_chunks_project_id"), ["project_id"], unique=False
        )
    _pack_points()
    op.drop_table("metrics")


def _pack_points() -> None:
    bind = op.get_bind()
    metrics, chunks = _metrics_table(), _chunks_table()
    query = sa.select(
        metrics.c.run_id,
        metrics.c.key,
        metrics.c.step,
        metrics.c.value,
        metrics.c.timestamp,
        metrics.c.project_id,
    ).order_by(metrics.c.run_id, metrics.c.key, metrics.c.step)
    rows = bind.execute(query.execution_options(yield_per=CHUNK_POINTS))
    batch: list[dict[str, Any]] = []
    for (run_id, key), points in groupby(rows, key=lambda r: (r[0], r[1])):
        for part in _parts(list(points)):
            batch.append(
                {
                    "run_id": run_id,
                    "key": key,
                    "first_step": part[0][2],
                    "last_step": part[-1][2],
                    "points": len(part),
                    "step_bytes": np.array([p[2] for p in part], dtype=_STEP).tobytes(),
                    "value_bytes": np.array([p[3] for p in part], dtype=_VALUE).tobytes(),
                    "timestamp_bytes": np.array([p[4] for p in part], dtype=_STEP).tobytes(),
                    "project_id": part[0][5],
                }
            )
            if len(batch) >= 100:
                bind.execute(sa.insert(chunks), batch)
                batch = []
    if batch:
        bind.execute(sa.insert(chunks), batch)


def _parts(points: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(points), CHUNK_POINTS):
        yield points[start : start + CHUNK_POINTS]


def downgrade() -> None:
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "key", "step", name=op.f("pk_metrics")),
        sqlite_with_rowid=False,
    )
    bind = op.get_bind()
    metrics, chunks = _metrics_table(), _chunks_table()
    query = sa.select(
        chunks.c.run_id,
        chunks.c.key,
        chunks.c.step_bytes,
        chunks.c.value_bytes,
        chunks.c.timestamp_bytes,
        chunks.c.project_id,
    )
    for run_id, key, steps, values, stamps, project_id in bind.execute(query).all():
        rows = zip(
            np.frombuffer(steps, dtype=_STEP).tolist(),
            np.frombuffer(values, dtype=_VALUE).tolist(),
            np.frombuffer(stamps, dtype=_STEP).tolist(),
            strict=True,
        )
        bind.execute(
            sa.insert(metrics),
            [
                {
                    "run_id": run_id,
                    "key": key,
                    "step": s,
                    "value": v,
                    "timestamp": t,
                    "project_id": project_id,
                }
                for s, v, t in rows
            ],
        )
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_metric_chunks_project_id"))
    op.drop_table("metric_chunks")

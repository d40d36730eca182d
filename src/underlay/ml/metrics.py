"""Metric points: batches written in bulk and exactly once, and histories read back.

A client batch (:class:`~underlay.ml.schemas.RunLog`) is written in one transaction that also
records its ``batch_id``; a batch whose id the run has already recorded is answered as a
duplicate and writes nothing, so a client that retries after a lost answer (a server killed
mid-request) never stores a point twice. The run row is locked first, so the batches of one
run are checked and written one after another.

The batch is checked as arrays (numpy), not point by point: values finite, steps in range
and, per key, strictly increasing from the key's latest stored step. Its points are then
grouped by key, and each key's points become one chunk row (:class:`MetricChunk`: steps,
values and timestamps packed as little-endian arrays), inserted with one ``executemany``;
the latest point of each key is upserted alongside, for searches. A history concatenates
the chunks of its key, in step order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import numpy as np
from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from underlay.errors import InvalidInput, NotFound
from underlay.ml.models import LatestMetric, MetricChunk, RunBatch
from underlay.ml.rules import MAX_STEP, check_key, check_key_count, check_step
from underlay.ml.runs import check_running, read_run, set_params, set_tags
from underlay.ml.schemas import MetricColumns, MetricHistory, RunLog, RunLogged

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""The media type of a history as Arrow IPC (``Accept`` it to get one)."""
STEP = np.dtype("<i8")
"""How steps and timestamps are packed in a chunk (values: :data:`VALUE`)."""
VALUE = np.dtype("<f8")
_CHUNKS = cast(Table, MetricChunk.__table__)  # Core statements: no ORM bookkeeping per row


@dataclass(frozen=True)
class Chunk:
    """The points of one key in a batch, in step order."""

    key: str
    steps: np.ndarray[Any, np.dtype[np.int64]]
    values: np.ndarray[Any, np.dtype[np.float64]]
    timestamps: np.ndarray[Any, np.dtype[np.int64]]


def log_batch(session: Session, project_id: int, run_id: int, body: RunLog) -> RunLogged:
    """Write one client batch (params, tags, metric points) exactly once."""
    run = read_run(session, project_id, run_id, lock=True)
    seen = session.scalar(
        select(RunBatch.points).where(RunBatch.run_id == run.id, RunBatch.batch_id == body.batch_id)
    )
    if seen is not None:
        return RunLogged(batch_id=body.batch_id, points=seen, duplicate=True)
    check_running(run)
    chunks = _check_columns(session, run.id, body.metrics)
    set_params(session, run, body.params)
    set_tags(session, run, body.tags)
    n = len(body.metrics.key)
    session.add(RunBatch(project_id=project_id, run_id=run.id, batch_id=body.batch_id, points=n))
    session.flush()
    if chunks:
        _insert_chunks(session, run.id, project_id, chunks)
        _upsert_latest(session, run.id, project_id, chunks)
    return RunLogged(batch_id=body.batch_id, points=n, duplicate=False)


def _check_columns(session: Session, run_id: int, cols: MetricColumns) -> list[Chunk]:
    """Check a batch against the rules and the run's stored steps; returns its points as
    one chunk per key."""
    n = len(cols.key)
    if not len(cols.step) == len(cols.value) == len(cols.timestamp) == n:
        raise InvalidInput("metric columns key, step, value and timestamp differ in length")
    if not n:
        return []
    for key in cols.keys:
        check_key(key)
    if len(set(cols.keys)) != len(cols.keys):
        raise InvalidInput("metric keys of a batch must be distinct")
    lowest, highest = min(cols.key), max(cols.key)
    if lowest < 0 or highest >= len(cols.keys):
        raise InvalidInput(f"a metric key index is outside 0..{len(cols.keys) - 1}")
    if min(cols.step) < 0 or max(cols.step) > MAX_STEP:
        raise InvalidInput("metric steps must be integers from 0 to 2**62")
    if min(cols.timestamp) < 0 or max(cols.timestamp) > MAX_STEP:
        raise InvalidInput("metric timestamps must be milliseconds since the epoch, >= 0")
    values = np.array(cols.value, dtype=VALUE)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.argmin(finite))
        key = cols.keys[cols.key[bad]]
        raise InvalidInput(
            f"metric {key!r}: value {cols.value[bad]} is not finite (NaN and infinities are "
            "refused)",
            key=key,
        )
    index = np.array(cols.key, dtype=np.int64)
    used = [lowest] if lowest == highest else np.unique(index).tolist()
    stored = _stored_steps(session, run_id, [cols.keys[i] for i in used])
    steps = np.array(cols.step, dtype=STEP)
    stamps = np.array(cols.timestamp, dtype=STEP)
    if len(used) == 1:  # one key (a column logged at once): no grouping to do
        order = None
        starts, ends = [0], [n]
    else:  # stable: within a key, the points keep the batch's order
        order = np.argsort(index, kind="stable")
        index, steps, values, stamps = index[order], steps[order], values[order], stamps[order]
        bounds = (np.flatnonzero(index[1:] != index[:-1]) + 1).tolist()
        starts, ends = [0, *bounds], [*bounds, n]
    _check_steps(cols, index, steps, order, starts, stored)
    return [
        Chunk(cols.keys[k], steps[a:b], values[a:b], stamps[a:b])
        for k, a, b in zip(used, starts, ends, strict=True)
    ]


def _stored_steps(session: Session, run_id: int, keys: list[str]) -> dict[str, int]:
    """The latest stored step of each of ``keys`` the run has (checking that the new keys
    keep the run within its number of keys)."""
    stored = dict(
        session.execute(
            select(LatestMetric.key, LatestMetric.step).where(
                LatestMetric.run_id == run_id, LatestMetric.key.in_(keys)
            )
        ).all()
    )
    new_keys = [k for k in keys if k not in stored]
    if new_keys:
        have = session.scalar(select(func.count()).where(LatestMetric.run_id == run_id)) or 0
        check_key_count(int(have), new_keys)
    return stored


def _check_steps(
    cols: MetricColumns,
    index: np.ndarray[Any, np.dtype[np.int64]],
    steps: np.ndarray[Any, np.dtype[np.int64]],
    order: np.ndarray[Any, np.dtype[np.intp]] | None,
    starts: list[int],
    stored: dict[str, int],
) -> None:
    """Refuse the batch at its first point (in the batch's order) whose step is not above
    the step before it of the same key (in the batch, else stored)."""
    bad = np.zeros(len(steps), dtype=bool)
    bad[1:] = (steps[1:] <= steps[:-1]) & (index[1:] == index[:-1])
    for start in starts:
        previous = stored.get(cols.keys[int(index[start])])
        bad[start] = previous is not None and int(steps[start]) <= previous
    if not bad.any():
        return
    where = np.flatnonzero(bad)
    at = int(where[np.argmin(order[where])]) if order is not None else int(where[0])
    key = cols.keys[int(index[at])]
    first = at in starts
    previous = stored[key] if first else int(steps[at - 1])
    check_step(key, int(steps[at]), previous)  # raises with the rule's message


def _insert_chunks(session: Session, run_id: int, project_id: int, chunks: list[Chunk]) -> None:
    rows = [
        {
            "project_id": project_id,
            "run_id": run_id,
            "key": c.key,
            "first_step": int(c.steps[0]),
            "last_step": int(c.steps[-1]),
            "points": len(c.steps),
            "step_bytes": c.steps.tobytes(),
            "value_bytes": c.values.tobytes(),
            "timestamp_bytes": c.timestamps.tobytes(),
        }
        for c in chunks
    ]
    session.execute(insert(_CHUNKS), rows)


def _upsert_latest(session: Session, run_id: int, project_id: int, chunks: list[Chunk]) -> None:
    rows = [
        {
            "project_id": project_id,
            "run_id": run_id,
            "key": c.key,
            "step": int(c.steps[-1]),
            "value": float(c.values[-1]),
            "timestamp": int(c.timestamps[-1]),
        }
        for c in chunks
    ]
    session.execute(_upsert_statement(session.get_bind().dialect.name), rows)


@cache
def _upsert_statement(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (run_id, key) DO UPDATE`` of the latest points (built once)."""
    from sqlalchemy.dialects import postgresql, sqlite

    stmt: Any = (postgresql if dialect == "postgresql" else sqlite).insert(LatestMetric)
    return stmt.on_conflict_do_update(
        index_elements=["run_id", "key"],
        set_={c: stmt.excluded[c] for c in ("step", "value", "timestamp")},
    )


@dataclass(frozen=True)
class History:
    """The points of one key of a run, in step order, as arrays."""

    run_id: int
    key: str
    total: int
    steps: np.ndarray[Any, np.dtype[np.int64]]
    values: np.ndarray[Any, np.dtype[np.float64]]
    timestamps: np.ndarray[Any, np.dtype[np.int64]]

    def arrow(self) -> bytes:
        """The columns as an Arrow IPC stream (``step``, ``value``, ``timestamp``; the run id,
        key and total in the schema's metadata): the arrays as they are, nothing to format."""
        import pyarrow as pa

        table = pa.table(
            {"step": self.steps, "value": self.values, "timestamp": self.timestamps},
            metadata={"run_id": str(self.run_id), "key": self.key, "total": str(self.total)},
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    def model(self) -> MetricHistory:
        # built without validation: the columns come from typed arrays
        return MetricHistory.model_construct(
            run_id=self.run_id,
            key=self.key,
            total=self.total,
            step=self.steps.tolist(),
            value=self.values.tolist(),
            timestamp=self.timestamps.tolist(),
        )


def read_history(
    session: Session, project_id: int, run_id: int, key: str, max_points: int | None = None
) -> History:
    """The points of ``key`` in step order; with ``max_points``, at most that many, evenly
    spaced by position, the first and last always kept."""
    run = read_run(session, project_id, run_id)
    check_key(key)
    chunk = _CHUNKS.c
    rows = session.execute(
        select(chunk.step_bytes, chunk.value_bytes, chunk.timestamp_bytes)
        .where(chunk.run_id == run.id, chunk.key == key)
        .order_by(chunk.first_step)
    ).all()
    if not rows and not session.scalar(
        select(func.count()).where(LatestMetric.run_id == run.id, LatestMetric.key == key)
    ):
        raise NotFound(f"run {run_id} has no metric {key!r}")
    steps = np.frombuffer(b"".join(r[0] for r in rows), dtype=STEP)
    values = np.frombuffer(b"".join(r[1] for r in rows), dtype=VALUE)
    stamps = np.frombuffer(b"".join(r[2] for r in rows), dtype=STEP)
    total = len(steps)
    if max_points is not None and total > max_points:
        picks = _downsample(total, max_points)
        steps, values, stamps = steps[picks], values[picks], stamps[picks]
    return History(run.id, key, total, steps, values, stamps)


def history(
    session: Session, project_id: int, run_id: int, key: str, max_points: int | None = None
) -> MetricHistory:
    """:func:`read_history` as the API's columns."""
    return read_history(session, project_id, run_id, key, max_points).model()


def _downsample(total: int, max_points: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Positions of ``max_points`` points evenly spaced over ``total``, the first and last
    kept (one point: the last)."""
    last = total - 1
    if max_points <= 1:
        return np.array([last], dtype=np.int64)
    # i * last / (max_points - 1), rounded half to even as round() does; exact below 2**53
    spaced = np.arange(max_points, dtype=np.int64) * last / (max_points - 1)
    return np.unique(np.rint(spaced).astype(np.int64))

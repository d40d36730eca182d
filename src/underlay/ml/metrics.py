"""Metric points: batches written in bulk and exactly once, and histories read back.

A client batch (:class:`~underlay.ml.schemas.RunLog`) is written in one transaction that also
records its ``batch_id``; a batch whose id the run has already recorded is answered as a
duplicate and writes nothing, so a client that retries after a lost answer (a server killed
mid-request) never stores a point twice. The run row is locked first, so the batches of one
run are checked and written one after another.

Points go in with one bulk statement: ``executemany`` on SQLite, binary ``COPY`` on
PostgreSQL (psycopg 3). The latest point of each key is upserted alongside, for searches.
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from underlay.errors import InvalidInput
from underlay.ml.models import LatestMetric, RunBatch
from underlay.ml.rules import MAX_STEP, check_key, check_key_count, check_step
from underlay.ml.runs import check_running, read_run, set_params, set_tags
from underlay.ml.schemas import MetricColumns, MetricHistory, RunLog, RunLogged

_COPY = "COPY metrics (run_id, key, step, value, timestamp, project_id) FROM STDIN (FORMAT BINARY)"
_INSERT = (
    "INSERT INTO metrics (run_id, key, step, value, timestamp, project_id) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

_HISTORY = "SELECT step, value, timestamp FROM metrics WHERE run_id = ? AND key = ? ORDER BY step"
_HISTORY_PG = _HISTORY.replace("?", "%s")


def log_batch(session: Session, project_id: int, run_id: int, body: RunLog) -> RunLogged:
    """Write one client batch (params, tags, metric points) exactly once."""
    run = read_run(session, project_id, run_id, lock=True)
    seen = session.scalar(
        select(RunBatch.points).where(RunBatch.run_id == run.id, RunBatch.batch_id == body.batch_id)
    )
    if seen is not None:
        return RunLogged(batch_id=body.batch_id, points=seen, duplicate=True)
    check_running(run)
    cols = body.metrics
    last = _check_columns(session, run.id, cols)
    set_params(session, run, body.params)
    set_tags(session, run, body.tags)
    n = len(cols.key)
    session.add(RunBatch(project_id=project_id, run_id=run.id, batch_id=body.batch_id, points=n))
    session.flush()
    if n:
        _insert_points(session, run.id, project_id, cols)
        _upsert_latest(session, run.id, project_id, cols, last)
    return RunLogged(batch_id=body.batch_id, points=n, duplicate=False)


def _check_columns(session: Session, run_id: int, cols: MetricColumns) -> dict[int, int]:
    """Check a batch against the rules and the run's stored steps; returns, per key index,
    the position of the key's last point in the batch."""
    n = len(cols.key)
    if not len(cols.step) == len(cols.value) == len(cols.timestamp) == n:
        raise InvalidInput("metric columns key, step, value and timestamp differ in length")
    if not n:
        return {}
    for key in cols.keys:
        check_key(key)
    if len(set(cols.keys)) != len(cols.keys):
        raise InvalidInput("metric keys of a batch must be distinct")
    if min(cols.key) < 0 or max(cols.key) >= len(cols.keys):
        raise InvalidInput(f"a metric key index is outside 0..{len(cols.keys) - 1}")
    if min(cols.step) < 0 or max(cols.step) > MAX_STEP:
        raise InvalidInput("metric steps must be integers from 0 to 2**62")
    if min(cols.timestamp) < 0 or max(cols.timestamp) > MAX_STEP:
        raise InvalidInput("metric timestamps must be milliseconds since the epoch, >= 0")
    bad = next((i for i, v in enumerate(cols.value) if v - v != 0.0), None)  # NaN or inf
    if bad is not None:
        key = cols.keys[cols.key[bad]]
        raise InvalidInput(
            f"metric {key!r}: value {cols.value[bad]} is not finite (NaN and infinities are "
            "refused)",
            key=key,
        )
    used = sorted(set(cols.key))
    stored = dict(
        session.execute(
            select(LatestMetric.key, LatestMetric.step).where(
                LatestMetric.run_id == run_id,
                LatestMetric.key.in_([cols.keys[i] for i in used]),
            )
        ).all()
    )
    new_keys = [cols.keys[i] for i in used if cols.keys[i] not in stored]
    if new_keys:
        have = session.scalar(select(func.count()).where(LatestMetric.run_id == run_id)) or 0
        check_key_count(int(have), new_keys)
    last_step: list[int | None] = [stored.get(k) for k in cols.keys]
    if len(used) == 1:  # one key (a column logged at once): compared in C, not point by point
        previous = last_step[used[0]]
        steps = cols.step
        if (previous is None or steps[0] > previous) and all(map(operator.lt, steps, steps[1:])):
            return {used[0]: n - 1}
    last_at: dict[int, int] = {}
    for i, (k, step) in enumerate(zip(cols.key, cols.step, strict=True)):
        previous = last_step[k]
        if previous is not None and step <= previous:
            check_step(cols.keys[k], step, previous)  # raises with the rule's message
        last_step[k] = step
        last_at[k] = i
    return last_at


def _insert_points(session: Session, run_id: int, project_id: int, cols: MetricColumns) -> None:
    keys = cols.keys
    rows = zip(
        repeat(run_id),
        [keys[i] for i in cols.key],
        cols.step,
        cols.value,
        cols.timestamp,
        repeat(project_id),
        strict=False,  # the repeats are endless; the columns are of one length (checked)
    )
    raw: Any = session.connection().connection.driver_connection
    if session.get_bind().dialect.name == "postgresql":
        with raw.cursor() as cur, cur.copy(_COPY) as copy:
            copy.set_types(["int4", "text", "int8", "float8", "int8", "int4"])
            for row in rows:
                copy.write_row(row)
        return
    cursor = raw.cursor()
    try:
        cursor.executemany(_INSERT, rows)
    finally:
        cursor.close()


def _upsert_latest(
    session: Session, run_id: int, project_id: int, cols: MetricColumns, last: dict[int, int]
) -> None:
    rows = [
        {
            "project_id": project_id,
            "run_id": run_id,
            "key": cols.keys[k],
            "step": cols.step[i],
            "value": cols.value[i],
            "timestamp": cols.timestamp[i],
        }
        for k, i in sorted(last.items())
    ]
    stmt: Any
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(LatestMetric)
        stmt = pg.on_conflict_do_update(
            index_elements=["run_id", "key"],
            set_={c: pg.excluded[c] for c in ("step", "value", "timestamp")},
        )
    else:
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        lite = lite_insert(LatestMetric)
        stmt = lite.on_conflict_do_update(
            index_elements=["run_id", "key"],
            set_={c: lite.excluded[c] for c in ("step", "value", "timestamp")},
        )
    session.execute(stmt, rows)


def history(
    session: Session, project_id: int, run_id: int, key: str, max_points: int | None = None
) -> MetricHistory:
    """The points of ``key`` in step order; with ``max_points``, at most that many, evenly
    spaced by position, the first and last always kept."""
    run = read_run(session, project_id, run_id)
    check_key(key)
    # raw rows from the driver (no per-row processing): the run was found through the
    # scoped session above, and the statement is a constant with bound parameters
    raw: Any = session.connection().connection.driver_connection
    postgres = session.get_bind().dialect.name == "postgresql"
    cursor = raw.cursor()
    try:
        cursor.execute(_HISTORY_PG if postgres else _HISTORY, (run.id, key))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    total = len(rows)
    if max_points is not None and total > max_points:
        rows = _downsample(rows, max_points)
    if not rows:
        if not session.scalar(
            select(func.count()).where(LatestMetric.run_id == run.id, LatestMetric.key == key)
        ):
            from underlay.errors import NotFound

            raise NotFound(f"run {run_id} has no metric {key!r}")
        return MetricHistory(run_id=run.id, key=key, total=0, step=[], value=[], timestamp=[])
    steps = [r[0] for r in rows]
    values = [r[1] for r in rows]
    stamps = [r[2] for r in rows]
    # built without validation: the columns come from the typed table
    return MetricHistory.model_construct(
        run_id=run.id, key=key, total=total, step=steps, value=values, timestamp=stamps
    )


def _downsample(rows: list[Any], max_points: int) -> list[Any]:
    if max_points <= 1:
        return rows[-1:]
    last = len(rows) - 1
    picks = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [rows[i] for i in picks]

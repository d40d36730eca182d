"""Runs: create, read, list, end and delete; their params, tags and inputs.

A run's status is a small state machine, written once here: ``running`` to ``finished``,
``failed`` or ``killed``, and nothing after that. Ending a run again with the status it has is
a no-op (a client that lost the answer retries); with another status it is a conflict. Logging
to an ended run is a conflict too.

Deleting a run deletes its rows (metrics, params, tags, inputs, artifacts and batches cascade
from the run), its lineage edges, and every blob of its artifacts that nothing else holds any
more: a blob still named by a row of another object (a dataset version, another run, a model
version) is kept by its foreign key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    delete,
    func,
    select,
)
from sqlalchemy.orm import Session

from underlay import lineage
from underlay.blobs import BlobStore
from underlay.errors import Conflict, NotFound
from underlay.ml import experiments
from underlay.ml.models import (
    Experiment,
    Run,
    RunArtifact,
    RunInput,
    RunParam,
    RunTag,
)
from underlay.ml.rules import MAX_PARAMS, check_key, check_text_value
from underlay.ml.schemas import (
    RunComparison,
    RunCreate,
    RunEnd,
    RunInputRef,
    RunRead,
)
from underlay.store.models import Project
from underlay.store.types import utcnow

RUNNING = "running"
TERMINAL = frozenset({"finished", "failed", "killed"})
TRANSITIONS = {RUNNING: TERMINAL}


def run_ref(run_id: int) -> lineage.ObjectRef:
    """The lineage node of a run: ``run:42``."""
    return lineage.ObjectRef("run", str(run_id))


def create_run(session: Session, project: Project, body: RunCreate, user_id: int | None) -> Run:
    """Start a run in experiment ``body.experiment`` (created on first use), after checking
    its job and inputs belong to ``project``; the inputs become lineage edges into the run."""
    if body.job_id is not None:
        from underlay.compute.jobs import read_job

        read_job(session, body.job_id, project)
    _check_inputs(session, project.id, body.inputs)
    experiment = experiments.get_or_create(session, project.id, body.experiment, user_id)
    run = Run(
        project_id=project.id,
        experiment_id=experiment.id,
        name=body.name,
        status=RUNNING,
        job_id=body.job_id,
        git_commit=body.git_commit,
        environment=body.environment,
        created_by=user_id,
    )
    session.add(run)
    session.flush()
    set_params(session, run, body.params)
    set_tags(session, run, body.tags)
    add_inputs(session, run, body.inputs)
    return run


def read_run(session: Session, project_id: int, run_id: int, *, lock: bool = False) -> Run:
    query = select(Run).where(Run.project_id == project_id, Run.id == run_id)
    found = session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound(f"run {run_id} not found")
    return found


@dataclass(frozen=True)
class RunSearch:
    """What :func:`list_runs` and :func:`search_rows` look for (see :mod:`underlay.ml.search`)."""

    experiment: str | None = None
    job_id: int | None = None
    status: str | None = None
    filter_expr: str = ""
    order_by: str = ""
    limit: int = 1000
    offset: int = 0


def list_runs(
    session: Session,
    project_id: int,
    *,
    experiment: str | None = None,
    job_id: int | None = None,
    status: str | None = None,
    filter_expr: str = "",
    order_by: str = "",
    limit: int = 1000,
) -> list[Run]:
    """The project's runs matching a search (:mod:`underlay.ml.search`), newest first unless
    ``order_by`` says otherwise."""
    search = RunSearch(experiment, job_id, status, filter_expr, order_by, limit)
    return list(session.scalars(_searched(session, project_id, select(Run), search)))


def _searched(session: Session, project_id: int, query: Any, search: RunSearch) -> Any:
    """``query`` (of runs) narrowed to the search, in its order, at most ``limit`` rows."""
    from underlay.ml.search import parse_filter, parse_order_by

    condition = parse_filter(search.filter_expr)
    ordering = parse_order_by(search.order_by)
    query = query.where(Run.project_id == project_id)
    if search.experiment is not None:
        experiment = experiments.get(session, project_id, search.experiment)
        query = query.where(Run.experiment_id == experiment.id)
    if search.job_id is not None:
        query = query.where(Run.job_id == search.job_id)
    if search.status is not None:
        query = query.where(Run.status == search.status)
    if condition is not None:
        query = query.where(condition)
    return query.order_by(*ordering, Run.id.desc()).limit(search.limit).offset(search.offset)


def count_runs(session: Session, project_id: int, search: RunSearch) -> int:
    """How many runs match ``search`` (its limit, offset and order aside): one COUNT."""
    whole = RunSearch(search.experiment, search.job_id, search.status, search.filter_expr)
    query = _searched(session, project_id, select(Run.id), whole).limit(None).order_by(None)
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def compare(session: Session, project_id: int, run_ids: Sequence[int]) -> RunComparison:
    """Runs side by side: every param and metric key any of them has, one value per run."""
    found = [read_run(session, project_id, run_id) for run_id in dict.fromkeys(run_ids)]
    rendered = render_many(session, found)
    param_keys = sorted({k for r in rendered for k in r.params})
    metric_keys = sorted({k for r in rendered for k in r.metrics})
    return RunComparison(
        runs=[r.id for r in rendered],
        params={k: [r.params.get(k) for r in rendered] for k in param_keys},
        metrics={
            k: [r.metrics[k].value if k in r.metrics else None for r in rendered]
            for k in metric_keys
        },
    )


def end_run(session: Session, project_id: int, run_id: int, body: RunEnd) -> Run:
    run = read_run(session, project_id, run_id, lock=True)
    if run.status == body.status:
        return run
    if body.status not in TRANSITIONS.get(run.status, frozenset()):
        raise Conflict(
            f"run {run_id} is {run.status} and cannot become {body.status}",
            run_status=run.status,
        )
    run.status = body.status
    run.error = body.error
    run.ended_at = utcnow()
    session.flush()
    return run


def check_running(run: Run) -> None:
    if run.status != RUNNING:
        raise Conflict(
            f"run {run.id} is {run.status}: nothing more can be logged to it", run_status=run.status
        )


def delete_run(session: Session, blobs: BlobStore, project_id: int, run_id: int) -> list[str]:
    """Delete a run and what it holds; returns the digests of the blobs removed with it."""
    run = read_run(session, project_id, run_id, lock=True)
    digests = sorted(
        set(session.scalars(select(RunArtifact.digest).where(RunArtifact.run_id == run.id)))
    )
    session.execute(delete(RunArtifact).where(RunArtifact.run_id == run.id))
    lineage.delete_edges_for(session, project_id, run_ref(run.id))
    session.delete(run)
    session.flush()
    removed = []
    for digest in digests:
        try:
            blobs.delete_blob(session, project_id, digest)
        except (Conflict, NotFound):
            continue  # another object holds it (or it is gone already)
        removed.append(digest)
    return removed


# -- params, tags, inputs --------------------------------------------------------------------


def set_params(session: Session, run: Run, params: dict[str, str]) -> None:
    """Add params; one set before to the same value is fine, to another value a conflict."""
    if not params:
        return
    checked = {check_key(k, "param"): check_text_value(k, v) for k, v in params.items()}
    old = dict(
        session.execute(
            select(RunParam.key, RunParam.value).where(
                RunParam.run_id == run.id, RunParam.key.in_(list(checked))
            )
        ).all()
    )
    for key, value in checked.items():
        if key in old and old[key] != value:
            raise Conflict(
                f"param {key!r} of run {run.id} is {old[key]!r:.200}; it cannot change to "
                f"{value!r:.200} (params are set once: log a new run, or use a tag)",
                key=key,
                old_value=old[key],
                new_value=value,
            )
    new = {k: v for k, v in checked.items() if k not in old}
    if not new:
        return
    count = _count(session, RunParam, run.id)
    if count + len(new) > MAX_PARAMS:
        raise Conflict(f"a run holds at most {MAX_PARAMS} params", limit=MAX_PARAMS)
    session.add_all(
        RunParam(project_id=run.project_id, run_id=run.id, key=k, value=v) for k, v in new.items()
    )
    session.flush()


def set_tags(session: Session, run: Run, tags: dict[str, str]) -> None:
    """Set tags (a tag, unlike a param, may change)."""
    if not tags:
        return
    checked = {check_key(k, "tag"): check_text_value(k, v, "tag") for k, v in tags.items()}
    existing = {
        t.key: t
        for t in session.scalars(
            select(RunTag).where(RunTag.run_id == run.id, RunTag.key.in_(list(checked)))
        )
    }
    new = {k: v for k, v in checked.items() if k not in existing}
    if new and _count(session, RunTag, run.id) + len(new) > MAX_PARAMS:
        raise Conflict(f"a run holds at most {MAX_PARAMS} tags", limit=MAX_PARAMS)
    for key, value in checked.items():
        if key in existing:
            existing[key].value = value
        else:
            session.add(RunTag(project_id=run.project_id, run_id=run.id, key=key, value=value))
    session.flush()


def add_inputs(session: Session, run: Run, inputs: Sequence[RunInputRef]) -> None:
    """Record the dataset/table versions a run read, with a lineage edge from each to it."""
    if not inputs:
        return
    _check_inputs(session, run.project_id, inputs)
    have = {
        (i.kind, i.name, i.version)
        for i in session.scalars(select(RunInput).where(RunInput.run_id == run.id))
    }
    for ref in inputs:
        if (ref.kind, ref.name, ref.version) in have:
            continue
        have.add((ref.kind, ref.name, ref.version))
        session.add(
            RunInput(
                project_id=run.project_id,
                run_id=run.id,
                kind=ref.kind,
                name=ref.name,
                version=ref.version,
            )
        )
        lineage.add_edge(session, run.project_id, input_ref(ref), "input", run_ref(run.id))
    session.flush()


def input_ref(ref: RunInputRef) -> lineage.ObjectRef:
    kind = "dataset_version" if ref.kind == "dataset" else "table_version"
    return lineage.ObjectRef(kind, f"{ref.name}@{ref.version}")


def _check_inputs(session: Session, project_id: int, inputs: Sequence[RunInputRef]) -> None:
    from underlay.data.models import Dataset, DatasetVersion, DataTable, DataTableVersion

    for ref in inputs:
        if ref.kind == "dataset":
            query = (
                select(DatasetVersion.id)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .where(
                    Dataset.project_id == project_id,
                    Dataset.name == ref.name,
                    DatasetVersion.version == ref.version,
                )
            )
        else:
            query = (
                select(DataTableVersion.id)
                .join(DataTable, DataTable.id == DataTableVersion.table_id)
                .where(
                    DataTable.project_id == project_id,
                    DataTable.name == ref.name,
                    DataTableVersion.version == ref.version,
                )
            )
        if session.scalar(query) is None:
            raise NotFound(f"{ref.kind} {ref.name!r} has no version {ref.version}")


def _count(session: Session, model: type[RunParam] | type[RunTag], run_id: int) -> int:
    return int(session.scalar(select(func.count()).where(model.run_id == run_id)) or 0)


# -- reading ---------------------------------------------------------------------------------


def render(session: Session, run: Run, experiment: str | None = None) -> RunRead:
    return render_many(session, [run], {run.experiment_id: experiment} if experiment else None)[0]


def render_many(
    session: Session, runs: Sequence[Run], names: dict[int, str | None] | None = None
) -> list[RunRead]:
    return [RunRead.model_validate(row) for row in run_rows(session, runs, names)]


def search_rows(session: Session, project_id: int, search: RunSearch) -> list[dict[str, Any]]:
    """:func:`list_runs` as plain data in the shape of :class:`RunRead` (JSON-ready), in two
    statements whatever the number of runs: one selects the matching runs' columns (no ORM
    objects), the other everything those runs hold (:data:`_HELD`)."""
    query = select(*_RUN_COLUMNS, Experiment.name).join(
        Experiment, Experiment.id == Run.experiment_id
    )
    found = session.execute(_searched(session, project_id, query, search)).all()
    return _rows(session, found)


_RUN_COLUMNS = (
    Run.id,
    Run.name,
    Run.status,
    Run.job_id,
    Run.git_commit,
    Run.error,
    Run.started_at,
    Run.ended_at,
)


def run_rows(
    session: Session, runs: Sequence[Run], names: dict[int, str | None] | None = None
) -> list[dict[str, Any]]:
    """Runs with their params, tags, latest metrics and inputs as plain data in the shape of
    :class:`RunRead` (JSON-ready)."""
    if not runs:
        return []
    wanted = {r.experiment_id for r in runs} - {k for k, v in (names or {}).items() if v}
    known = {k: v for k, v in (names or {}).items() if v}
    if wanted:
        known.update(
            session.execute(
                select(Experiment.id, Experiment.name).where(Experiment.id.in_(wanted))
            ).all()
        )
    found = [
        (
            r.id,
            r.name,
            r.status,
            r.job_id,
            r.git_commit,
            r.error,
            r.started_at,
            r.ended_at,
            known.get(r.experiment_id, ""),
        )
        for r in runs
    ]
    return _rows(session, found)


def _rows(session: Session, found: Sequence[Any]) -> list[dict[str, Any]]:
    """``found`` (the columns of :data:`_RUN_COLUMNS` and the experiment's name) with what
    the runs hold."""
    params: dict[int, dict[str, str]] = {}
    tags: dict[int, dict[str, str]] = {}
    metrics: dict[int, dict[str, dict[str, Any]]] = {}
    inputs: dict[int, list[tuple[str, str, int]]] = {}
    for kind, rid, key, text, value, step, ts in _held(session, [r[0] for r in found]):
        if kind == 2:
            metrics.setdefault(rid, {})[key] = {"step": step, "value": value, "timestamp": ts}
        elif kind == 0:
            params.setdefault(rid, {})[key] = text
        elif kind == 1:
            tags.setdefault(rid, {})[key] = text
        else:
            inputs.setdefault(rid, []).append((key, text, step))
    empty: dict[str, Any] = {}
    return [
        {
            "id": rid,
            "experiment": experiment,
            "name": name,
            "status": status,
            "job_id": job_id,
            "git_commit": git_commit,
            "error": error,
            "started_at": started_at.isoformat(),
            "ended_at": ended_at.isoformat() if ended_at else None,
            "params": dict(sorted(params.get(rid, empty).items())),
            "tags": dict(sorted(tags.get(rid, empty).items())),
            "metrics": dict(sorted(metrics.get(rid, empty).items())),
            "inputs": [
                {"kind": k, "name": n, "version": v} for k, n, v in sorted(inputs.get(rid, []))
            ],
        }
        for rid, name, status, job_id, git_commit, error, started_at, ended_at, experiment in found
    ]


def _held(session: Session, ids: list[int]) -> list[Any]:
    """The params (0), tags (1), latest metrics (2) and inputs (3) of the runs ``ids`` in one
    constant statement (:data:`_HELD`) on the driver's cursor: nothing to compile, no per-row
    processing. The ids are runs found through the scoped session; they travel as one
    parameter (a JSON array on SQLite, an array on PostgreSQL)."""
    if not ids:
        return []
    raw: Any = session.connection().connection.driver_connection
    param: Any
    if session.get_bind().dialect.name == "postgresql":
        statement, param = _HELD.format(ids="SELECT unnest(%s::integer[])"), ids
    else:
        statement, param = _HELD.format(ids="SELECT value FROM json_each(?)"), json.dumps(ids)
    cursor = raw.cursor()
    try:
        cursor.execute(statement, (param,))
        return list(cursor.fetchall())
    finally:
        cursor.close()


_HELD = """
WITH ids(id) AS ({ids})
SELECT 0, run_id, key, value, CAST(NULL AS DOUBLE PRECISION), CAST(NULL AS BIGINT),
       CAST(NULL AS BIGINT)
  FROM run_params WHERE run_id IN (SELECT id FROM ids)
UNION ALL
SELECT 1, run_id, key, value, NULL, NULL, NULL FROM run_tags WHERE run_id IN (SELECT id FROM ids)
UNION ALL
SELECT 2, run_id, key, NULL, value, step, timestamp
  FROM latest_metrics WHERE run_id IN (SELECT id FROM ids)
UNION ALL
SELECT 3, run_id, kind, name, NULL, version, NULL
  FROM run_inputs WHERE run_id IN (SELECT id FROM ids)
"""

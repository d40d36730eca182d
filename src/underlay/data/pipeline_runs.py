"""Pipeline runs: the server's record of each run of an ETL pipeline, and its lineage.

The server never runs a pipeline. Its transforms are user code (Python functions, SQL), and
user code is hostile, so a pipeline runs on the caller's side through the SDK, with exactly
the caller's permissions: on their machine (``pipelines run --local``) or in a sandboxed job
on the scheduler. What the server does is keep the record, and only what it can check:

* at the start, every input names a table of the project at a published version, and the
  job, when there is one, is a job of the project;
* at the end of a successful run, the output version is a published version of the output
  table; only then are the lineage edges ``table_version:in@v --pipeline--> table_version:
  out@w`` added, one per input.

A run's status is a small state machine: ``running`` to ``succeeded`` or ``failed``, once.

A runner can die without saying so (SIGKILL, a lost machine), so a running run is held on a
lease: its runner renews it (:func:`renew_lease`, every quarter of ``data.pipeline_run_lease_s``)
and the server records the renewal as the run's ``duration_s`` so far. A run is settled as
failed (:func:`settle`), when anyone reads, renews or finishes it, once

* its lease has expired: no renewal for ``pipeline_run_lease_s`` seconds; or
* it ran as a job and that job no longer runs (ended, or queued again for a retry): the
  attempt that ran it is over, whatever the lease says.

Each settlement is audited by the caller (``pipeline.run.expire``, by ``system``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay import lineage
from underlay.data.models import DataTable, DataTableVersion, PipelineRun
from underlay.data.schemas import PipelineRunCreate, PipelineRunFinish, PipelineRunRead
from underlay.errors import Conflict, NotFound
from underlay.store.models import Project, User
from underlay.store.types import utcnow

RUNNING = "running"
TERMINAL = frozenset({"succeeded", "failed"})
RELATION = "pipeline"


def table_version_ref(table: str, version: int) -> lineage.ObjectRef:
    """The lineage node of a table at one version: ``table_version:sales@3``."""
    return lineage.ObjectRef("table_version", f"{table}@{version}")


def _check_version(session: Session, project_id: int, table: str, version: int) -> None:
    found = session.scalar(
        select(DataTable).where(DataTable.project_id == project_id, DataTable.name == table)
    )
    if found is None:
        raise NotFound(f"table {table!r} not found")
    row = session.scalar(
        select(DataTableVersion.id).where(
            DataTableVersion.table_id == found.id, DataTableVersion.version == version
        )
    )
    if row is None:
        raise NotFound(f"table {table!r} has no version {version}")


def create_run(
    session: Session, project: Project, body: PipelineRunCreate, user_id: int | None
) -> PipelineRun:
    """Record the start of a run after checking its inputs (and job) belong to ``project``."""
    for ref in body.inputs:
        _check_version(session, project.id, ref.table, ref.version)
    if body.job_id is not None:
        from underlay.compute.jobs import read_job

        read_job(session, body.job_id, project)
    run = PipelineRun(
        project_id=project.id,
        pipeline=body.pipeline,
        spec_digest=body.spec_digest,
        status=RUNNING,
        inputs=json.dumps([ref.model_dump() for ref in body.inputs]),
        output_table=body.output_table,
        job_id=body.job_id,
        created_by=user_id,
    )
    session.add(run)
    session.flush()
    return run


def read_run(session: Session, project: Project, run_id: int) -> PipelineRun:
    run = session.get(PipelineRun, run_id)
    if run is None or run.project_id != project.id:
        raise NotFound(f"pipeline run {run_id} not found in project {project.name!r}")
    return run


def list_runs(
    session: Session,
    project: Project,
    pipeline: str | None = None,
    job_id: int | None = None,
    limit: int = 100,
) -> Sequence[PipelineRun]:
    """The project's runs, newest first; of one pipeline or one job when asked."""
    query = select(PipelineRun).where(PipelineRun.project_id == project.id)
    if pipeline is not None:
        query = query.where(PipelineRun.pipeline == pipeline)
    if job_id is not None:
        query = query.where(PipelineRun.job_id == job_id)
    return session.scalars(query.order_by(PipelineRun.id.desc()).limit(limit)).all()


def finish_run(
    session: Session, project: Project, run_id: int, body: PipelineRunFinish, lease_s: float
) -> PipelineRun:
    """Record the end of a run (once); a success adds the lineage of its output version. A run
    whose lease expired has ended already (failed)."""
    run = read_run(session, project, run_id)
    settle(session, project, lease_s, [run])
    if run.status in TERMINAL:
        raise Conflict(f"pipeline run {run_id} has ended already ({run.status})")
    if body.status == "succeeded":
        if body.output_version is None:
            raise Conflict("a succeeded run names the output version it wrote")
        _check_version(session, project.id, run.output_table, body.output_version)
        output = table_version_ref(run.output_table, body.output_version)
        for ref in json.loads(run.inputs):
            source = table_version_ref(ref["table"], ref["version"])
            if source != output:
                lineage.add_edge(session, project.id, source, RELATION, output)
    run.status = body.status
    run.output_version = body.output_version
    run.rows_in, run.rows_out = body.rows_in, body.rows_out
    run.rows_rejected, run.rows_quarantined = body.rows_rejected, body.rows_quarantined
    run.steps = json.dumps([step.model_dump() for step in body.steps])
    run.error = body.error
    run.duration_s = body.duration_s
    run.finished_at = utcnow()
    session.flush()
    return run


def renew_lease(session: Session, project: Project, run_id: int, lease_s: float) -> PipelineRun:
    """The runner is alive: the run's lease runs ``lease_s`` from now. Conflict when the run has
    ended (finished, or settled as failed because the lease had expired): the runner stops."""
    run = read_run(session, project, run_id)
    settle(session, project, lease_s, [run])
    if run.status in TERMINAL:
        raise Conflict(f"pipeline run {run_id} has ended already ({run.status}: {run.error})")
    run.duration_s = round((utcnow() - run.started_at).total_seconds(), 6)
    session.flush()
    return run


def settle(
    session: Session,
    project: Project,
    lease_s: float,
    candidates: Sequence[PipelineRun] | None = None,
) -> list[PipelineRun]:
    """Record as failed the running runs (of ``candidates``, else of the project) whose lease
    expired or whose job no longer runs (see the module docstring); returns them."""
    if candidates is None:
        query = select(PipelineRun).where(
            PipelineRun.project_id == project.id, PipelineRun.status == RUNNING
        )
        candidates = session.scalars(query).all()
    now = utcnow()
    settled = []
    for run in candidates:
        if run.status != RUNNING:
            continue
        reason = _ended_job(session, run) or _expired(run, lease_s, now)
        if reason:
            run.status, run.error, run.finished_at = "failed", reason, now
            run.duration_s = round((now - run.started_at).total_seconds(), 6)
            settled.append(run)
    session.flush()
    return settled


def _expired(run: PipelineRun, lease_s: float, now: dt.datetime) -> str:
    renewed = run.started_at + dt.timedelta(seconds=run.duration_s or 0.0)
    if now - renewed <= dt.timedelta(seconds=lease_s):
        return ""
    return (
        f"the runner stopped renewing the run's lease (none for {lease_s:g} s): it died or "
        "lost the server"
    )


def _ended_job(session: Session, run: PipelineRun) -> str:
    if run.job_id is None:
        return ""
    from underlay.compute.models import Job
    from underlay.compute.states import ACTIVE

    job = session.get(Job, run.job_id)
    if job is None:
        return f"its job {run.job_id} is gone"
    if job.state in ACTIVE:
        return ""
    return f"its job {run.job_id} is {job.state}: the attempt that ran it ended first"


def render(session: Session, run: PipelineRun, lease_s: float | None = None) -> PipelineRunRead:
    user = session.get(User, run.created_by) if run.created_by else None
    fields = {c.key: getattr(run, c.key) for c in PipelineRun.__table__.columns}
    fields["created_by"] = user.name if user is not None else None
    fields["lease_s"] = lease_s if run.status == RUNNING else None
    return PipelineRunRead.model_validate(fields)

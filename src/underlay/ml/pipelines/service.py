"""ML pipeline runs on the server: the record of each run and each step call, the output
cache, pickle signatures and lineage.

The server runs no step: steps are user code, run by the caller's driver in its own process
(``--local``) or as sandboxed jobs (see :mod:`underlay.ml.pipelines.runner`). What the server
decides is what it can check:

* **The cache key.** A call names its code digest, its literal parameters and its inputs as
  ``(call, output)`` of the same run; the server resolves those to the digests it recorded
  and computes ``sha256(code, input digests, params)`` itself, so a caller cannot claim a
  cache hit for outputs it did not produce. A call whose key matches an earlier succeeded
  call of the project, whose output blobs all still exist, is ``cached`` at once with those
  outputs (``cached_from`` names the call), and no job runs.
* **Outputs.** Each output names a blob of the project; a ``pickle`` output is signed with
  the platform's key over ``(project, digest)`` (:func:`~.serialize.signed_payload`), which is
  what a reader checks before unpickling.
* **Lineage.** Each finished (or cached) call adds ``ml_output:R.A.out --input--> ml_step:R.B``
  for its inputs, ``ml_step:R.B --produced--> ml_output:R.B.name --stored_as--> blob:DIGEST``
  for its outputs, and ``ml_step:R0.B --reused_by--> ml_step:R.B`` for a cache hit.

Runs go ``running`` -> ``succeeded`` | ``failed`` once; steps ``pending`` -> ``running`` ->
``succeeded`` | ``failed``, or ``cached`` / ``skipped`` (an input failed) straight away.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay import lineage
from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.ml.pipelines.models import MLPipelineRun, MLPipelineStep
from underlay.ml.pipelines.schemas import (
    RunCreate,
    RunFinish,
    RunRead,
    StepCreate,
    StepFinish,
    StepRead,
    StepStart,
)
from underlay.ml.pipelines.serialize import signed_payload
from underlay.store.models import Blob, Project, User
from underlay.store.types import utcnow

RUN_TERMINAL = ("succeeded", "failed")
STEP_TERMINAL = ("succeeded", "failed", "cached", "skipped")
DONE = ("succeeded", "cached")  # a call whose outputs can be read


def cache_key(code_digest: str, inputs: dict[str, str], params: dict[str, Any]) -> str:
    """SHA-256 of the code digest, each input's blob digest by argument, and the params."""
    text = json.dumps(
        {"code": code_digest, "inputs": inputs, "params": params},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()


# -- runs -----------------------------------------------------------------------------------------


def create_run(
    session: Session, project: Project, body: RunCreate, user_id: int | None
) -> MLPipelineRun:
    run = MLPipelineRun(
        project_id=project.id,
        pipeline=body.pipeline,
        mode=body.mode,
        params=json.dumps(body.params, sort_keys=True),
        created_by=user_id,
    )
    session.add(run)
    session.flush()
    return run


def read_run(session: Session, project: Project, run_id: int) -> MLPipelineRun:
    run = session.get(MLPipelineRun, run_id)
    if run is None or run.project_id != project.id:
        raise NotFound(f"ML pipeline run {run_id} not found in project {project.name!r}")
    return run


def list_runs(
    session: Session, project: Project, pipeline: str | None, limit: int = 100
) -> Sequence[MLPipelineRun]:
    query = select(MLPipelineRun).where(MLPipelineRun.project_id == project.id)
    if pipeline is not None:
        query = query.where(MLPipelineRun.pipeline == pipeline)
    return session.scalars(query.order_by(MLPipelineRun.id.desc()).limit(limit)).all()


def finish_run(session: Session, project: Project, run_id: int, body: RunFinish) -> MLPipelineRun:
    run = read_run(session, project, run_id)
    if run.status in RUN_TERMINAL:
        raise Conflict(f"ML pipeline run {run_id} has ended already ({run.status})")
    keys = {step.key: step for step in _steps(session, run)}
    for record in body.sweeps:
        unknown = [k for k in record.trials if k not in keys]
        if unknown:
            raise InvalidInput(f"sweep {record.name}: run {run_id} has no step {unknown[0]!r}")
        if record.best is not None and record.best not in record.trials:
            raise InvalidInput(
                f"sweep {record.name}: best {record.best!r} is not one of its trials"
            )
    if body.status == "succeeded":
        open_steps = [k for k, s in keys.items() if s.status not in STEP_TERMINAL]
        if open_steps:
            raise Conflict(f"run {run_id} still has step {open_steps[0]!r} open")
    run.status = body.status
    run.error = body.error
    run.duration_s = body.duration_s
    run.sweeps = json.dumps([record.model_dump() for record in body.sweeps])
    run.finished_at = utcnow()
    session.flush()
    return run


# -- steps ----------------------------------------------------------------------------------------


def _steps(session: Session, run: MLPipelineRun) -> Sequence[MLPipelineStep]:
    query = select(MLPipelineStep).where(
        MLPipelineStep.project_id == run.project_id, MLPipelineStep.run_id == run.id
    )
    return session.scalars(query.order_by(MLPipelineStep.id)).all()


def read_step(session: Session, project: Project, run_id: int, key: str) -> MLPipelineStep:
    run = read_run(session, project, run_id)
    found = session.scalar(
        select(MLPipelineStep).where(
            MLPipelineStep.project_id == project.id,
            MLPipelineStep.run_id == run.id,
            MLPipelineStep.key == key,
        )
    )
    if found is None:
        raise NotFound(f"ML pipeline run {run_id} has no step {key!r}")
    return found


def create_step(
    session: Session, project: Project, run_id: int, body: StepCreate
) -> MLPipelineStep:
    """Record a call; ``cached`` at once when an earlier call had the same cache key, and
    ``skipped`` when an input's call did not succeed."""
    run = read_run(session, project, run_id)
    if run.status in RUN_TERMINAL:
        raise Conflict(f"ML pipeline run {run_id} has ended already ({run.status})")
    inputs, skipped = _resolve_inputs(session, project, run, body)
    digests = {arg: ref["digest"] for arg, ref in inputs.items()}
    step = MLPipelineStep(
        project_id=project.id,
        run_id=run.id,
        key=body.key,
        step=body.step,
        sweep=body.sweep,
        code_digest=body.code_digest,
        cache_key=cache_key(body.code_digest, digests, body.params),
        params=json.dumps(body.params, sort_keys=True),
        inputs=json.dumps(inputs, sort_keys=True),
        resources=json.dumps(body.resources, sort_keys=True),
    )
    if read_step_or_none(session, project, run.id, body.key) is not None:
        raise Conflict(f"ML pipeline run {run_id} has a step {body.key!r} already")
    if skipped:
        step.status, step.error = "skipped", skipped
        step.finished_at = utcnow()
    elif body.cache and (hit := _cached(session, project, step.cache_key)) is not None:
        step.status = "cached"
        step.outputs, step.metrics = hit.outputs, hit.metrics
        step.cached_from = hit.id
        step.finished_at = utcnow()
    session.add(step)
    session.flush()
    if step.status == "cached":
        origin = session.get(MLPipelineStep, step.cached_from)
        assert origin is not None
        lineage.add_edge(session, project.id, _step_ref(origin), "reused_by", _step_ref(step))
        _add_lineage(session, step)
    return step


def read_step_or_none(
    session: Session, project: Project, run_id: int, key: str
) -> MLPipelineStep | None:
    return session.scalar(
        select(MLPipelineStep).where(
            MLPipelineStep.project_id == project.id,
            MLPipelineStep.run_id == run_id,
            MLPipelineStep.key == key,
        )
    )


def _resolve_inputs(
    session: Session, project: Project, run: MLPipelineRun, body: StepCreate
) -> tuple[dict[str, dict[str, Any]], str]:
    """Each input as the output it reads (digest, format, size, signature); the reason to
    skip the call when an input's call did not succeed."""
    resolved: dict[str, dict[str, Any]] = {}
    for arg, ref in body.inputs.items():
        source = read_step_or_none(session, project, run.id, ref.step)
        if source is None:
            raise InvalidInput(
                f"step {body.key}: input {arg} reads step {ref.step!r}, which this run has not "
                "recorded"
            )
        if source.status not in DONE:
            if source.status in ("failed", "skipped"):
                return {}, f"input {arg} comes from step {ref.step}, which {source.status}"
            raise Conflict(
                f"step {body.key}: input {arg}: step {ref.step} is still {source.status}"
            )
        outputs = json.loads(source.outputs)
        if ref.output not in outputs:
            names = ", ".join(sorted(outputs))
            raise InvalidInput(
                f"step {body.key}: input {arg}: step {ref.step} has no output {ref.output!r} "
                f"(outputs: {names})"
            )
        resolved[arg] = {"step": ref.step, "output": ref.output, **outputs[ref.output]}
    return resolved, ""


def _cached(session: Session, project: Project, key: str) -> MLPipelineStep | None:
    """The newest done call with ``key`` whose output blobs all still exist."""
    query = (
        select(MLPipelineStep)
        .where(
            MLPipelineStep.project_id == project.id,
            MLPipelineStep.cache_key == key,
            MLPipelineStep.status.in_(DONE),
        )
        .order_by(MLPipelineStep.id.desc())
        .limit(8)
    )
    for candidate in session.scalars(query):
        digests = {ref["digest"] for ref in json.loads(candidate.outputs).values()}
        held = session.scalars(
            select(Blob.digest).where(Blob.project_id == project.id, Blob.digest.in_(digests))
        ).all()
        if digests and set(held) == digests:
            if candidate.cached_from is None:
                return candidate
            return session.get(MLPipelineStep, candidate.cached_from) or candidate
    return None


def start_step(
    session: Session, project: Project, run_id: int, key: str, body: StepStart
) -> MLPipelineStep:
    step = read_step(session, project, run_id, key)
    if step.status != "pending":
        raise Conflict(f"step {key} of run {run_id} is {step.status}, not pending")
    if body.job_id is not None:
        from underlay.compute.jobs import read_job

        read_job(session, body.job_id, project)  # a job of this project, or NotFound
    step.status = "running"
    step.job_id = body.job_id
    session.flush()
    return step


def finish_step(
    session: Session,
    project: Project,
    run_id: int,
    key: str,
    body: StepFinish,
    sign: Callable[[bytes], bytes],
) -> MLPipelineStep:
    """Record a call's end: its outputs (blobs of the project; a pickle signed here) and
    metrics, and its lineage; or its error."""
    step = read_step(session, project, run_id, key)
    if step.status not in ("pending", "running"):
        raise Conflict(f"step {key} of run {run_id} has ended already ({step.status})")
    outputs: dict[str, dict[str, Any]] = {}
    if body.status == "succeeded":
        if not body.outputs:
            raise InvalidInput(f"step {key}: a succeeded step names its outputs")
        digests = {out.digest for out in body.outputs.values()}
        held = set(
            session.scalars(
                select(Blob.digest).where(Blob.project_id == project.id, Blob.digest.in_(digests))
            ).all()
        )
        for name, out in body.outputs.items():
            if out.digest not in held:
                raise NotFound(
                    f"step {key}: output {name}: blob {out.digest[:12]} is not in the project"
                )
            outputs[name] = out.model_dump()
            if out.format == "pickle":
                outputs[name]["signature"] = sign(signed_payload(project.id, out.digest)).hex()
    step.status = body.status
    step.outputs = json.dumps(outputs, sort_keys=True)
    step.metrics = json.dumps(body.metrics, sort_keys=True)
    step.error = body.error
    step.attempts = body.attempts
    step.duration_s = body.duration_s
    step.finished_at = utcnow()
    session.flush()
    if body.status == "succeeded":
        _add_lineage(session, step)
    return step


def _step_ref(step: MLPipelineStep) -> lineage.ObjectRef:
    return lineage.ObjectRef("ml_step", f"{step.run_id}.{step.key}")


def _add_lineage(session: Session, step: MLPipelineStep) -> None:
    node = _step_ref(step)
    for ref in json.loads(step.inputs).values():
        source = lineage.ObjectRef("ml_output", f"{step.run_id}.{ref['step']}.{ref['output']}")
        lineage.add_edge(session, step.project_id, source, "input", node)
    for name, ref in json.loads(step.outputs).items():
        output = lineage.ObjectRef("ml_output", f"{step.run_id}.{step.key}.{name}")
        lineage.add_edge(session, step.project_id, node, "produced", output)
        blob = lineage.ObjectRef("blob", ref["digest"])
        lineage.add_edge(session, step.project_id, output, "stored_as", blob)


# -- rendering ------------------------------------------------------------------------------------


def render_step(session: Session, step: MLPipelineStep) -> StepRead:
    fields = {c.key: getattr(step, c.key) for c in MLPipelineStep.__table__.columns}
    for name in ("params", "inputs", "outputs", "metrics", "resources"):
        fields[name] = json.loads(fields[name])
    if step.cached_from is not None:
        origin = session.get(MLPipelineStep, step.cached_from)
        fields["cached_from_run"] = origin.run_id if origin is not None else None
    return StepRead.model_validate(fields)


def render_run(
    session: Session, run: MLPipelineRun, signing_key: bytes, *, steps: bool = True
) -> RunRead:
    user = session.get(User, run.created_by) if run.created_by else None
    fields: dict[str, Any] = {c.key: getattr(run, c.key) for c in MLPipelineRun.__table__.columns}
    fields["created_by"] = user.name if user is not None else None
    fields["params"] = json.loads(run.params)
    fields["sweeps"] = json.loads(run.sweeps)
    fields["signing_key"] = signing_key.hex()
    if steps:
        fields["steps"] = [render_step(session, step) for step in _steps(session, run)]
    return RunRead.model_validate(fields)

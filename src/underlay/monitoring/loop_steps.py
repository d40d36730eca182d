"""The retraining loop's state machine and its steps.

A run moves ``triggered -> training -> evaluating -> [awaiting_approval ->] canary`` and
ends ``promoted``, ``rolled_back`` (the canary broke its limits), ``rejected`` (the
challenger did not win by the margin, or there was too little labelled traffic to tell),
``failed`` (a step failed: the training job, the registration) or ``abandoned`` (something
outside the loop changed what it was driving: a restart lost the training job, someone else
promoted, rolled back or replaced the canary, or a user abandoned it). Every transition is
written once, in :data:`ALLOWED`, and checked in :func:`transition`.

:func:`advance` does one step of one run inside the caller's transaction, and is idempotent:
a step reads what it needs from the run's row and the objects it names (the job, the model
version, the deployment), so running it again after a crash (whose transaction rolled back)
does the same thing again, and a step that finds nothing to do yet changes nothing.
Champion and challenger are only ever changed through serving's canary, so a run that stops
anywhere leaves the champion serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay import lineage
from underlay.errors import Conflict, InvalidInput, NotFound, UnderlayError
from underlay.identity import Actor
from underlay.monitoring.loop_models import RetrainRun
from underlay.store.models import Project
from underlay.store.types import utcnow

if TYPE_CHECKING:
    from underlay.platform import Platform

log = logging.getLogger(__name__)

LOOP_ACTOR = Actor(user_id=0, name="retrain-loop", is_admin=True)
TERMINAL = frozenset({"promoted", "rolled_back", "rejected", "failed", "abandoned"})
ALLOWED: dict[str, frozenset[str]] = {
    "triggered": frozenset({"training", "failed", "abandoned"}),
    "training": frozenset({"evaluating", "failed", "abandoned"}),
    "evaluating": frozenset({"awaiting_approval", "canary", "rejected", "failed", "abandoned"}),
    "awaiting_approval": frozenset({"canary", "failed", "abandoned"}),
    "canary": frozenset({"promoted", "rolled_back", "failed", "abandoned"}),
}
STATES = (*ALLOWED, *sorted(TERMINAL))
JOB_WAITING = ("queued", "admitted", "running", "preempted")


def run_ref(run: RetrainRun) -> lineage.ObjectRef:
    return lineage.ObjectRef("retrain_run", str(run.id))


def loads(text: str) -> Any:
    return json.loads(text or "{}")


def transition(
    session: Session,
    platform: Platform,
    project: Project,
    run: RetrainRun,
    to: str,
    detail: str,
    *,
    actor: Any = LOOP_ACTOR.name,
    **figures: Any,
) -> None:
    """Move ``run`` to ``to`` (checked against :data:`ALLOWED`), note it in its history and
    audit it, all in the caller's transaction."""
    if to not in ALLOWED.get(run.state, frozenset()):
        raise Conflict(f"retrain run {run.id} is {run.state}: it cannot become {to}")
    if run.state == "evaluating":
        _drop_slice(session, platform, project, run)
    now = utcnow()
    steps = loads(run.steps) if run.steps else []
    steps.append({"state": to, "at": now.isoformat(), "detail": detail[:1000], **figures})
    run.steps = json.dumps(steps, default=str)
    run.state = to
    run.updated_at = now
    if to in TERMINAL:
        run.finished_at = now
        run.reason = detail[:2000]
    platform.audit.append(
        session,
        actor=actor,
        action=f"retrain.{to}",
        resource=f"project:{project.name}/deployment:{run.deployment}/retrain:{run.id}",
        project=project.name,
        outcome="ok",
        detail={"run": run.id, "detail": detail[:300], **_short(figures)},
    )


def _drop_slice(session: Session, platform: Platform, project: Project, run: RetrainRun) -> None:
    """Delete the held-out slice's blob once the evaluation is over: it is a copy of logged
    traffic, which must not outlive its use (nor escape an erasure of the prediction log)."""
    digest = loads(run.evaluation).get("data")
    if not digest:
        return
    others = session.scalars(
        select(RetrainRun.id).where(
            RetrainRun.project_id == project.id,
            RetrainRun.id != run.id,
            RetrainRun.state == "evaluating",
            RetrainRun.evaluation.contains(digest),
        )
    ).first()
    if others is not None:  # the same rows, in another run's evaluation still going
        return
    # gone already, or held by a dataset version of its own: leave it
    with contextlib.suppress(NotFound, Conflict):
        platform.blobs.delete_blob(session, project.id, digest)


def _short(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if isinstance(v, int | float | str | None)}


def _alert(session: Session, project: Project, run: RetrainRun, message: str) -> None:
    """A ``retrain`` alert of severity ``error`` (source ``retrain``) about the deployment."""
    from underlay.monitoring.alerts import raise_alert

    raise_alert(
        session,
        project_id=project.id,
        kind="retrain",
        subject=run.deployment,
        message=f"retrain run {run.id} of deployment {run.deployment!r}: {message}",
        severity="error",
        source="retrain",
        details={"run": run.id, "state": run.state},
    )


def fail(
    session: Session,
    platform: Platform,
    project: Project,
    run: RetrainRun,
    message: str,
    state: str = "failed",
) -> None:
    """End ``run`` as ``failed`` (or ``abandoned``) and raise the alert; the champion stays."""
    transition(session, platform, project, run, state, f"{message}; the champion stays")
    _alert(session, project, run, message)


def advance(session: Session, platform: Platform, project: Project, run: RetrainRun) -> bool:
    """One step of ``run``; True when it changed state."""
    before = run.state
    step = _STEPS.get(run.state)
    if step is None:
        return False
    try:
        step(session, platform, project, run)
    except UnderlayError as error:  # the step's own failure: the run fails, nothing else
        raise StepFailed(error.message) from error
    return run.state != before


class StepFailed(Exception):
    """A step failed: the caller rolls its transaction back and fails the run in a new one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- the steps ---------------------------------------------------------------------------------


def _triggered(session: Session, platform: Platform, project: Project, run: RetrainRun) -> None:
    """Submit the training pipeline as a job on the newest version of the training table."""
    from underlay.compute.jobs import submit_job
    from underlay.compute.schemas import JobCreate
    from underlay.data.pipeline_runs import table_version_ref
    from underlay.data.tables import TableStore

    policy = loads(run.policy)
    table = TableStore(platform.settings).get(session, project.id, policy["table"])
    assert table is not None
    if table.published_version is None:
        raise InvalidInput(f"table {policy['table']!r} has no version to train on")
    version = f"{policy['table']}@{table.published_version}"
    command = training_command(project.name, policy, version)
    body = JobCreate(
        command=command,
        name=f"retrain-{run.deployment}-{run.id}"[:63],
        workdir_digest=policy["workdir_digest"],
        env={**policy.get("env", {}), "RETRAIN_RUN": str(run.id)},
        cpus=float(policy.get("cpus", 1.0)),
        memory_mib=int(policy.get("memory_mib", 2048)),
    )
    job, _ = submit_job(
        session, project, _owner(policy), body, keyring=platform.keyring, settings=platform.settings
    )
    run.training_job_id = job.id
    run.table_version = version
    lineage.add_edge(
        session, project.id, table_version_ref(policy["table"], table.published_version),
        "input", run_ref(run),
    )  # fmt: skip
    transition(
        session, platform, project, run, "training", f"training job {job.id} on {version}",
        job=job.id, table_version=version,
    )  # fmt: skip


def training_command(project: str, policy: dict[str, Any], version: str) -> list[str]:
    """What the training job runs: the policy's pipeline, in-process in the job, on
    ``version`` (its ``table`` parameter)."""
    return [
        "underlay", "pipelines", "run", "--local", policy["pipeline_file"], "-p", project,
        "--pipeline", policy["pipeline"], "-P", f"table={version}", "-q",
    ]  # fmt: skip


def _training(session: Session, platform: Platform, project: Project, run: RetrainRun) -> None:
    """Wait for the training job; then register the challenger from the run it logged."""
    from underlay.ml.models import Run
    from underlay.ml.registry.service import register_from_run, version_ref

    assert run.training_job_id is not None
    if not _job_done(session, platform, project, run, run.training_job_id, "training"):
        return
    job_id = run.training_job_id
    found = session.scalar(
        select(Run)
        .where(Run.project_id == project.id, Run.job_id == job_id)
        .order_by(Run.id.desc())
    )
    if found is None:
        raise InvalidInput(f"training job {job_id} succeeded but logged no run with a model")
    policy = loads(run.policy)
    model = _deployment(session, project, run).model
    version = register_from_run(
        session, platform.blobs, platform.signer, project.id, model,
        run_id=found.id, path=policy["artifact"],
        description=f"challenger of retrain run {run.id} (deployment {run.deployment})",
    )  # fmt: skip
    run.tracking_run_id = found.id
    run.challenger_version = version.version
    lineage.add_edge(
        session, project.id, run_ref(run), "produced", version_ref(model, version.version)
    )
    transition(
        session, platform, project, run, "evaluating",
        f"registered challenger {model}@{version.version} from run {found.id}",
        challenger=version.version, tracking_run=found.id,
    )  # fmt: skip


def _last_line(platform: Platform, job_id: int) -> str:
    from underlay.compute import logs

    try:
        data = logs.read(platform.settings.home, job_id, 0, 1 << 20)
    except (OSError, UnderlayError):
        return ""
    lines = [s.strip() for s in data.decode(errors="replace").splitlines() if s.strip()]
    return lines[-1][:300] if lines else ""


def _deployment(session: Session, project: Project, run: RetrainRun, lock: bool = False) -> Any:
    from underlay.serving.service import get_deployment

    return get_deployment(session, project.id, run.deployment, lock=lock)


def _evaluating(session: Session, platform: Platform, project: Project, run: RetrainRun) -> None:
    """Champion vs challenger on the held-out slice of recent labelled traffic, scored by a
    sandboxed job (:mod:`underlay.monitoring.loop_eval`): submit it, wait for it, judge."""
    from underlay.monitoring import loop_eval

    deployment = _deployment(session, project, run)
    evaluation = loads(run.evaluation)
    if deployment.target_version != run.champion_version:
        cancel_job(session, platform, project, evaluation.get("job"))
        fail(
            session, platform, project, run,
            f"the deployment serves version {deployment.target_version} now, not the champion "
            f"{run.champion_version} this run started from", "abandoned",
        )  # fmt: skip
        return
    policy = loads(run.policy)
    if "job" not in evaluation:
        base, rows = loop_eval.prepare(session, platform, project, deployment.name, policy)
        if rows is None:
            run.evaluation = json.dumps(base, default=str)
            transition(
                session, platform, project, run, "rejected", base["reason"], **_figures(base)
            )
            return
        result = loop_eval.submit(
            session, platform, project, run, deployment.model, _owner(policy), base, rows
        )
        run.evaluation = json.dumps(result, default=str)
        return
    if not _job_done(session, platform, project, run, int(evaluation["job"]), "evaluation"):
        return
    assert run.challenger_version is not None
    home = platform.settings.home
    result = loop_eval.collect(home, evaluation, deployment.model, run.challenger_version)
    run.evaluation = json.dumps(result, default=str)
    figures = _figures(result)
    if not result["wins"]:
        transition(session, platform, project, run, "rejected", result["reason"], **figures)
        return
    if run.mode == "approval":
        transition(
            session, platform, project, run, "awaiting_approval",
            f"{result['reason']}; waiting for approval (underlay monitor approve)", **figures,
        )  # fmt: skip
        return
    start_canary(session, platform, project, run, LOOP_ACTOR.name, result["reason"])


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("metric", "champion", "challenger", "rows", "job")}


def _job_done(
    session: Session, platform: Platform, project: Project, run: RetrainRun, job_id: int, what: str
) -> bool:
    """Whether ``run``'s ``what`` job succeeded; a job still waiting is False, one that ended
    otherwise (or is gone) ends the run, and is False too."""
    from underlay.compute.jobs import read_job

    try:
        job = read_job(session, job_id, project)
    except NotFound:
        fail(session, platform, project, run, f"its {what} job is gone", "abandoned")
        return False
    if job.state in JOB_WAITING:
        return False
    if job.state != "succeeded":
        why = f"{what} job {job.id} ended {job.state}"
        line = _last_line(platform, job.id)
        why += f" ({job.reason or line})" if job.reason or line else ""
        fail(session, platform, project, run, why, "abandoned" if job.state == "lost" else "failed")
        return False
    return True


def _owner(policy: dict[str, Any]) -> Actor:
    """Whom the loop's jobs run as: the user who set the policy (their token logs the model
    and loads the versions)."""
    return Actor(user_id=policy.get("owner_id") or 0, name=LOOP_ACTOR.name, is_admin=False)


def cancel_job(
    session: Session, platform: Platform, project: Project, job_id: int | None, actor: Any = None
) -> None:
    """Cancel the run's job ``job_id`` if it is still waiting or running."""
    from underlay.compute.jobs import cancel_job as cancel
    from underlay.compute.jobs import read_job

    if job_id is None:
        return
    try:
        job = read_job(session, int(job_id), project)
    except NotFound:
        return
    if job.state in JOB_WAITING:
        cancel(session, platform.audit, job, actor or LOOP_ACTOR, platform.settings.compute.grace_s)


def start_canary(
    session: Session,
    platform: Platform,
    project: Project,
    run: RetrainRun,
    actor: str,
    why: str,
) -> bool:
    """Start serving's canary of the challenger (its automatic rollback included); False,
    changing nothing, while the rolling update to the champion still runs."""
    from underlay.serving import lifecycle
    from underlay.serving.schemas import CanaryStart

    deployment = _deployment(session, project, run, lock=True)
    if deployment.target_version != run.champion_version or deployment.canary_state in (
        "starting",
        "running",
    ):
        fail(
            session, platform, project, run,
            f"the deployment changed meanwhile (version {deployment.target_version}, canary "
            f"{deployment.canary_state})", "abandoned",
        )  # fmt: skip
        return True
    if deployment.version != deployment.target_version:
        return False  # a canary waits for the champion's rolling update to end
    policy = loads(run.policy)
    body = CanaryStart(
        model=f"{deployment.model}@{run.challenger_version}",
        weight=policy["canary_weight"],
        window_s=policy["canary_window_s"],
        min_requests=policy["canary_min_requests"],
        reason=f"retrain run {run.id}: {why}"[:1000],
    )
    lifecycle.start_canary(session, platform, project, LOOP_ACTOR, deployment.name, body)
    run.canary = json.dumps(body.model_dump())
    transition(
        session, platform, project, run, "canary",
        f"canary of version {run.challenger_version} at weight {body.weight} for "
        f"{body.window_s:g} s", actor=actor, version=run.challenger_version,
    )  # fmt: skip
    platform.wake_scheduler()
    return True


def _canary(session: Session, platform: Platform, project: Project, run: RetrainRun) -> None:
    """Wait for serving's verdict: promote a passed canary, follow a rollback."""
    from underlay.ml.registry.service import version_ref
    from underlay.serving import lifecycle
    from underlay.serving.models import DeploymentEvent
    from underlay.serving.service import deployment_ref

    deployment = _deployment(session, project, run, lock=True)
    state = deployment.canary_state
    if deployment.canary_version != run.challenger_version:
        fail(session, platform, project, run, "another canary replaced this one", "abandoned")
    elif state in ("starting", "running"):
        return
    elif state == "passed":
        lifecycle.promote(
            session, platform, project, LOOP_ACTOR, deployment.name,
            f"retrain run {run.id}: the canary passed",
        )  # fmt: skip
        assert run.challenger_version is not None
        lineage.add_edge(
            session, project.id, version_ref(deployment.model, run.challenger_version),
            "deployed", deployment_ref(deployment.name),
        )  # fmt: skip
        transition(
            session, platform, project, run, "promoted",
            f"version {run.challenger_version} passed its canary and is promoted",
        )  # fmt: skip
    elif state == "rolled_back":
        event = session.scalar(
            select(DeploymentEvent)
            .where(
                DeploymentEvent.deployment_id == deployment.id, DeploymentEvent.kind == "rollback"
            )
            .order_by(DeploymentEvent.id.desc())
        )
        why = event.reason if event is not None else "the canary was rolled back"
        transition(session, platform, project, run, "rolled_back", f"{why}; the champion stays")
    elif state == "promoted":
        transition(session, platform, project, run, "promoted", "the canary was promoted by hand")
    else:
        fail(session, platform, project, run, f"the canary is {state}", "abandoned")


_STEPS = {
    "triggered": _triggered,
    "training": _training,
    "evaluating": _evaluating,
    "canary": _canary,
}

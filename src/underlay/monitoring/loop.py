"""The closed loop: drift or poor performance -> retrain -> evaluate -> canary -> promote.

A **policy** per deployment (:class:`~underlay.monitoring.loop_models.RetrainPolicy`) says
when to retrain (a share of drifted features in the newest drift report, or a performance
floor), what to run (an ML pipeline file in an uploaded folder, given the newest version of
the training table as its ``table`` parameter), how to judge the challenger (a margin on a
held-out slice of labelled traffic) and how to canary it; its ``mode`` is ``auto``,
``approval`` (a winning challenger waits for ``underlay monitor approve``) or ``dry-run``
(the loop never acts by itself; :func:`plan` says what it would do).

A **run** is a persisted state machine (:mod:`underlay.monitoring.loop_steps`), advanced by
:class:`~underlay.monitoring.loop_driver.LoopDriver`, a thread of the server: every tick it
starts runs whose trigger fired and advances each unfinished run by one step, each step one
transaction under the run's row lock, so a restarted server resumes every run where its last
committed step left it.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.errors import Conflict, InvalidInput, NotFound
from underlay.identity import Actor
from underlay.monitoring import loop_steps as steps
from underlay.monitoring.loop_models import RetrainPolicy, RetrainRun
from underlay.monitoring.loop_schemas import PolicyRead, PolicySet, RunRead
from underlay.store.models import Blob, Project
from underlay.store.types import utcnow

if TYPE_CHECKING:
    from underlay.platform import Platform

log = logging.getLogger(__name__)
MAX_WORKDIR_BYTES = 512 * 1024 * 1024
DriftSource = Callable[[Session, "Platform", Project, str], "dict[str, Any] | None"]


# -- policies ------------------------------------------------------------------------------------


def set_policy(
    session: Session,
    platform: Platform,
    project: Project,
    actor: Actor,
    deployment: str,
    body: PolicySet,
) -> RetrainPolicy:
    """Create or replace ``deployment``'s policy after checking what it names exists."""
    from underlay.data.tables import TableStore
    from underlay.serving.service import get_deployment

    get_deployment(session, project.id, deployment)
    if body.table is None:
        from underlay.monitoring.reference import resolve_reference

        table = resolve_reference(session, project, deployment).table
        body = body.model_copy(update={"table": table})
    assert body.table is not None
    TableStore(platform.settings).get(session, project.id, body.table)
    _check_workdir(session, platform, project, body.workdir_digest, body.pipeline_file)
    policy = read_policy(session, project, deployment, missing_ok=True)
    if policy is None:
        policy = RetrainPolicy(project_id=project.id, deployment=deployment)
        session.add(policy)
    for field, value in body.model_dump().items():
        setattr(policy, field, json.dumps(value) if field == "env" else value)
    policy.owner_id = actor.user_id or None
    policy.updated_by = actor.name[:128]
    policy.updated_at = utcnow()
    session.flush()
    return policy


def _check_workdir(
    session: Session, platform: Platform, project: Project, digest: str, file: str
) -> None:
    """The uploaded folder exists in the project and holds the pipeline's file."""
    found = session.scalar(
        select(Blob.id).where(Blob.project_id == project.id, Blob.digest == digest)
    )
    if found is None:
        raise NotFound(f"project {project.name!r} has no uploaded folder sha256:{digest}")
    data = b"".join(platform.blobs.open(session, project.id, digest))
    try:
        with tarfile.open(fileobj=io.BytesIO(data[:MAX_WORKDIR_BYTES]), mode="r:*") as tar:
            names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError):
        raise InvalidInput(f"blob sha256:{digest} is not an uploaded folder (a tar.gz)") from None
    if file.removeprefix("./") not in names:
        raise InvalidInput(f"the uploaded folder has no file {file!r}")


def read_policy(
    session: Session, project: Project, deployment: str, *, missing_ok: bool = False
) -> RetrainPolicy | None:
    found = session.scalar(
        select(RetrainPolicy).where(
            RetrainPolicy.project_id == project.id, RetrainPolicy.deployment == deployment
        )
    )
    if found is None and not missing_ok:
        raise NotFound(
            f"deployment {deployment!r} has no retrain policy: set one with "
            "'underlay monitor policy set'"
        )
    return found


def render_policy(policy: RetrainPolicy) -> PolicyRead:
    return PolicyRead.model_validate(policy)


def _policy_dict(policy: RetrainPolicy) -> dict[str, Any]:
    data = render_policy(policy).model_dump(include=_FIELDS)
    return {**data, "owner_id": policy.owner_id}


_FIELDS = set(PolicySet.model_fields)


# -- runs ----------------------------------------------------------------------------------------


def active_run(session: Session, project_id: int, deployment: str) -> RetrainRun | None:
    return session.scalar(
        select(RetrainRun).where(
            RetrainRun.project_id == project_id,
            RetrainRun.deployment == deployment,
            RetrainRun.state.not_in(steps.TERMINAL),
        )
    )


def start_run(
    session: Session,
    platform: Platform,
    project: Project,
    actor: Actor,
    deployment: str,
    trigger: dict[str, Any],
) -> RetrainRun:
    """A new run in ``triggered`` (the driver takes it from there)."""
    from underlay.serving.service import deployment_ref, get_deployment

    found = get_deployment(session, project.id, deployment, lock=True)
    policy = read_policy(session, project, deployment)
    assert policy is not None
    if policy.mode == "dry-run":
        raise InvalidInput(
            f"the retrain policy of {deployment!r} is in dry-run mode: it plans but never runs "
            "(see 'underlay monitor loop --dry-run'); set --mode auto or approval to run it"
        )
    running = active_run(session, project.id, deployment)
    if running is not None:
        raise Conflict(
            f"deployment {deployment!r} has retrain run {running.id} in progress ({running.state})"
        )
    if found.canary_state in ("starting", "running"):
        raise Conflict(f"deployment {deployment!r} runs a canary already: finish it first")
    run = RetrainRun(
        project_id=project.id,
        deployment=deployment,
        mode=policy.mode,
        state="triggered",
        policy=json.dumps(_policy_dict(policy)),
        trigger=json.dumps(trigger, default=str),
        champion_version=found.target_version,  # what it serves once a rolling update ends
        created_by=actor.name[:128],
        policy_id=policy.id,
    )
    run.steps = json.dumps(
        [{"state": "triggered", "at": utcnow().isoformat(), "detail": trigger.get("reason", "")}]
    )
    session.add(run)
    session.flush()
    from underlay import lineage

    lineage.add_edge(
        session, project.id, steps.run_ref(run), "retrains", deployment_ref(deployment)
    )
    return run


def approve(
    session: Session, platform: Platform, project: Project, actor: Actor, run_id: int
) -> RetrainRun:
    """Let a run waiting in ``awaiting_approval`` start its canary."""
    run = read_run(session, project, run_id, lock=True)
    if run.state != "awaiting_approval":
        raise Conflict(f"retrain run {run.id} is {run.state}, not awaiting approval")
    run.approved_by = actor.name[:128]
    if not steps.start_canary(
        session, platform, project, run, actor.name, f"approved by {actor.name}"
    ):
        raise Conflict(
            f"deployment {run.deployment!r} is still rolling out version {run.champion_version}:"
            " approve once its rolling update has finished"
        )
    return run


def abandon(
    session: Session, platform: Platform, project: Project, actor: Actor, run_id: int
) -> RetrainRun:
    """Stop a run by hand: its training or evaluation job is cancelled, its canary rolled
    back; the champion stays."""
    from underlay.serving import lifecycle

    run = read_run(session, project, run_id, lock=True)
    if run.state in steps.TERMINAL:
        raise Conflict(f"retrain run {run.id} has ended already ({run.state})")
    from underlay.serving.service import get_deployment

    deployment = get_deployment(session, project.id, run.deployment)
    if (
        run.state == "canary"
        and deployment.canary_version == run.challenger_version
        and deployment.canary_state in ("starting", "running", "passed")
    ):
        lifecycle.rollback(
            session,
            platform,
            project,
            actor.name,
            run.deployment,
            f"retrain run {run.id} abandoned",
        )
    elif run.state == "training":
        steps.cancel_job(session, platform, project, run.training_job_id, actor)
    elif run.state == "evaluating":
        steps.cancel_job(session, platform, project, steps.loads(run.evaluation).get("job"), actor)
    steps.transition(
        session, platform, project, run, "abandoned", f"abandoned by {actor.name}", actor=actor.name
    )
    return run


def read_run(session: Session, project: Project, run_id: int, *, lock: bool = False) -> RetrainRun:
    run = session.get(RetrainRun, run_id, with_for_update=lock)
    if run is None or run.project_id != project.id:
        raise NotFound(f"retrain run {run_id} not found in project {project.name!r}")
    return run


def list_runs(
    session: Session, project: Project, deployment: str | None = None, limit: int = 100
) -> list[RetrainRun]:
    query = select(RetrainRun).where(RetrainRun.project_id == project.id)
    if deployment is not None:
        query = query.where(RetrainRun.deployment == deployment)
    return list(session.scalars(query.order_by(RetrainRun.id.desc()).limit(limit)))


def render_run(run: RetrainRun) -> RunRead:
    return RunRead(
        id=run.id,
        deployment=run.deployment,
        mode=run.mode,
        state=run.state,
        terminal=run.state in steps.TERMINAL,
        trigger=steps.loads(run.trigger),
        table_version=run.table_version,
        champion_version=run.champion_version,
        challenger_version=run.challenger_version,
        training_job_id=run.training_job_id,
        tracking_run_id=run.tracking_run_id,
        evaluation=steps.loads(run.evaluation),
        canary=steps.loads(run.canary),
        steps=steps.loads(run.steps) if run.steps else [],
        reason=run.reason,
        created_by=run.created_by,
        approved_by=run.approved_by,
        created_at=run.created_at,
        updated_at=run.updated_at,
        finished_at=run.finished_at,
    )


# -- triggers and the plan -----------------------------------------------------------------------


def drift_trigger(policy: RetrainPolicy, drift: dict[str, Any] | None) -> dict[str, Any]:
    """Whether a drift summary (a drift check's ``to_dict()``: ``state``, ``flagged``,
    ``features``) crosses the policy's ``drift_share``."""
    if not drift:
        return {"fires": False, "reason": "no drift report yet"}
    if not isinstance(drift, dict) or not isinstance(drift.get("flagged", []), list):
        raise InvalidInput("a drift summary is a drift check's JSON: {state, flagged, features}")
    features = drift.get("features") or []
    total = len(features) if isinstance(features, list) and features else 0
    flagged = [str(f) for f in drift.get("flagged", [])]
    if drift.get("state") == "too_few_rows":
        return {
            "fires": False,
            "reason": "the newest drift report had too few rows",
            "report": drift.get("id"),
        }
    share = len(flagged) / total if total else (1.0 if flagged else 0.0)
    fires = share >= policy.drift_share and bool(flagged)
    reason = (
        f"{len(flagged)} of {total or len(flagged)} features drifted ({', '.join(flagged[:8])}): "
        f"share {share:.2f} {'>=' if fires else '<'} the policy's {policy.drift_share:.2f}"
    )
    return {
        "fires": fires,
        "reason": reason,
        "share": round(share, 4),
        "flagged": flagged,
        "report": drift.get("id"),
    }


def performance_trigger(
    session: Session, platform: Platform, project: Project, policy: RetrainPolicy
) -> dict[str, Any]:
    """Whether the deployment's performance on its labelled traffic since the last run (all
    of it before the first) is under the policy's ``metric_floor``: accuracy for a
    classifier, -RMSE for a regressor; at least ``min_rows`` labelled rows."""
    from underlay.data.tables import TableStore
    from underlay.monitoring.performance import deployment_performance

    if policy.metric_floor is None:
        return {"fires": False, "reason": "the policy sets no performance floor"}
    last = session.scalar(
        select(RetrainRun.created_at)
        .where(RetrainRun.project_id == project.id, RetrainRun.deployment == policy.deployment)
        .order_by(RetrainRun.id.desc())
    )
    since = None if last is None else last.timestamp()
    task: Literal["classification", "regression"] = (
        "regression" if policy.task == "regression" else "classification"
    )
    report = deployment_performance(
        session, TableStore(platform.settings), project.id, policy.deployment, task,
        since=since, min_rows=policy.min_rows,
    )  # fmt: skip
    overall = report.overall
    if overall.insufficient is not None:
        return {"fires": False, "reason": f"performance: {overall.insufficient}"}
    if task == "regression":
        rmse = overall.metrics.get("rmse")
        metric, value = "neg_rmse", None if rmse is None else -float(rmse)
    else:
        accuracy = overall.metrics.get("accuracy")
        metric, value = "accuracy", None if accuracy is None else float(accuracy)
    if value is None:
        return {"fires": False, "reason": f"performance: no {metric} on the labelled traffic"}
    fires = value < policy.metric_floor
    reason = (
        f"{metric} {value:.4f} on {overall.rows} labelled rows is "
        f"{'under' if fires else 'not under'} the policy's floor {policy.metric_floor:g}"
    )
    return {"fires": fires, "reason": reason, "metric": metric, "value": round(value, 6)}


def newest_drift(
    session: Session, platform: Platform, project: Project, deployment: str
) -> dict[str, Any] | None:
    """The newest stored drift report of ``deployment`` (its ``to_dict()``), or None."""
    from underlay.monitoring.checks import list_drift_reports

    reports = list_drift_reports(session, project.id, deployment, limit=1)
    return reports[0] if reports else None


def _no_policy(found: Any, summary: dict[str, Any] | None) -> dict[str, Any]:
    """The plan of a deployment without a policy: the loop does nothing."""
    why = "no retrain policy: set one with 'underlay monitor policy set'"
    newest = None
    if summary:
        newest = {k: summary.get(k) for k in ("id", "state", "flagged", "created_at")}
    return {
        "deployment": found.name,
        "mode": None,
        "champion": {"model": found.model, "version": found.target_version},
        "would_start": False,
        "blocked": why,
        "steps": [{"step": "trigger", "would": "do nothing", "reason": why, "drift": newest}],
    }


def plan(
    session: Session,
    platform: Platform,
    project: Project,
    deployment: str,
    drift: dict[str, Any] | None = None,
    drift_source: DriftSource = newest_drift,
) -> dict[str, Any]:
    """What the loop would do now, step by step; reads only."""
    from underlay.data.tables import TableStore
    from underlay.serving.service import get_deployment

    found = get_deployment(session, project.id, deployment)
    policy = read_policy(session, project, deployment, missing_ok=True)
    summary = drift if drift is not None else drift_source(session, platform, project, deployment)
    if policy is None:
        return _no_policy(found, summary)
    trigger = {**drift_trigger(policy, summary), "source": "drift"}
    if not trigger["fires"] and drift is None and policy.metric_floor is not None:
        trigger = {
            **performance_trigger(session, platform, project, policy),
            "source": "performance",
        }
    running = active_run(session, project.id, deployment)
    table = TableStore(platform.settings).get(session, project.id, policy.table, missing_ok=True)
    version = (
        None
        if table is None or table.published_version is None
        else f"{policy.table}@{table.published_version}"
    )
    pol = _policy_dict(policy)
    will_run = (
        trigger["fires"] and running is None and policy.mode != "dry-run" and version is not None
    )
    model, champion = found.model, f"{found.model}@{found.target_version}"
    approval = "wait for 'underlay monitor approve'" if policy.mode == "approval" else "none"
    items = [
        {"step": "trigger", "would": "start a run" if will_run else "do nothing", **trigger},
        {
            "step": "training",
            "would": "submit a job",
            "table_version": version,
            "command": steps.training_command(project.name, pol, version or f"{policy.table}@?"),
        },
        {"step": "register", "would": f"register {policy.artifact!r} as a version of {model!r}"},
        {
            "step": "evaluate",
            "would": f"compare with champion {champion} in a sandboxed job, on the newest "
            f"{policy.holdout_share:g} of labelled traffic (at least {policy.min_rows} rows)",
            "metric": "neg_rmse" if policy.task == "regression" else "accuracy",
            "margin": policy.margin,
        },
        {"step": "approval", "would": approval},
        {
            "step": "canary",
            "would": f"canary at weight {policy.canary_weight:g} for "
            f"{policy.canary_window_s:g} s (at least {policy.canary_min_requests} requests; "
            "automatic rollback)",
        },
        {"step": "promote", "would": "promote when the canary passes; else the champion stays"},
    ]
    blocked = None
    if running is not None:
        blocked = f"retrain run {running.id} is in progress ({running.state})"
    elif version is None:
        blocked = f"table {policy.table!r} has no version to train on"
    elif policy.mode == "dry-run":
        blocked = "the policy is in dry-run mode"
    return {
        "deployment": deployment,
        "mode": policy.mode,
        "champion": {"model": found.model, "version": found.target_version},
        "would_start": will_run,
        "blocked": blocked,
        "steps": items,
    }


def manual_trigger(
    session: Session, platform: Platform, project: Project, deployment: str, body: Any
) -> dict[str, Any]:
    """The trigger of a run started through the API: a drift summary that must cross the
    policy, or a plain start by hand."""
    policy = read_policy(session, project, deployment)
    assert policy is not None
    if body.drift is None:
        return {"source": "manual", "reason": body.reason or "started by hand"}
    trigger = drift_trigger(policy, body.drift)
    if not trigger["fires"]:
        raise InvalidInput(f"the drift summary does not cross the policy: {trigger['reason']}")
    return {**trigger, "source": "drift"}


def purge_project(session: Session, project_id: int) -> None:
    """Remove a deleted project's retrain runs and policies."""
    from sqlalchemy import delete

    session.execute(delete(RetrainRun).where(RetrainRun.project_id == project_id))
    session.execute(delete(RetrainPolicy).where(RetrainPolicy.project_id == project_id))

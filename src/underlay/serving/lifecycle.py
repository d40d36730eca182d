"""What changes a deployment over time: canaries (start, promote, roll back) and the
reconciler that the serving runtime runs every fraction of a second.

:func:`reconcile` restarts the replica of a slot whose job ended (a crash, a lost node, a
cancel from outside), advances rolling updates (:func:`advance_update`), marks a canary
running once one of its replicas is ready, and cancels the jobs of drained replicas (their
rows go once the jobs have ended).
It is idempotent and safe to run from several server processes: each deployment is handled
under a row lock.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.compute.models import Job
from underlay.errors import Conflict, InvalidInput
from underlay.identity import Actor
from underlay.platform import Platform
from underlay.serving.interfaces import same_interface
from underlay.serving.models import Deployment, DeploymentReplica
from underlay.serving.schemas import CanaryStart
from underlay.serving.service import (
    CANARY,
    LIVE_JOB,
    MAX_SURGE,
    STABLE,
    _cancel_jobs,
    _roll,
    add_replica,
    drain,
    get_deployment,
    job_states,
    record,
    replicas_of,
    submit_replica_job,
    touch,
    verified_version,
)
from underlay.store.models import Project
from underlay.store.types import utcnow

RUNTIME_ACTOR = "serving"


def start_canary(
    session: Session,
    platform: Platform,
    project: Project,
    actor: Actor,
    name: str,
    body: CanaryStart,
) -> Deployment:
    """Start replicas of another version that take ``weight`` of the traffic once ready."""
    deployment = get_deployment(session, project.id, name, lock=True)
    if deployment.canary_state in ("starting", "running"):
        raise Conflict(
            f"deployment {name!r} runs a canary of version {deployment.canary_version} "
            "already: promote or roll it back first"
        )
    version = verified_version(session, platform, project.id, body.model)
    if body.model.partition("@")[0] != deployment.model:
        raise InvalidInput(f"a canary of {name!r} must be a version of {deployment.model!r}")
    for replica in replicas_of(session, deployment.id):
        if replica.arm == CANARY:
            drain(session, replica, "a new canary started")
    deployment.canary_version = version.version
    deployment.canary_weight = body.weight
    deployment.canary_state = "starting"
    deployment.canary_started_at = None
    policy = body.model_dump(include={"weight", "window_s", "min_requests", "max_error_rate"})
    policy["max_p99_ms"] = body.max_p99_ms
    deployment.canary_policy = json.dumps(policy)
    for slot in range(body.replicas):
        add_replica(session, platform, project, deployment, slot, CANARY, version.version)
    record(
        session,
        deployment,
        "canary.start",
        actor.name,
        body.reason,
        version=version.version,
        weight=body.weight,
    )
    return deployment


def promote(
    session: Session, platform: Platform, project: Project, actor: Actor, name: str, reason: str
) -> Deployment:
    """Make the running canary the stable version (a rolling update that reuses the canary's
    ready replicas)."""
    deployment = get_deployment(session, project.id, name, lock=True)
    # "passed": the canary monitor's verdict, which the retraining loop promotes
    if (
        deployment.canary_state not in ("starting", "running", "passed")
        or deployment.canary_version is None
    ):
        raise Conflict(f"deployment {name!r} runs no canary to promote")
    version = deployment.canary_version
    for replica in replicas_of(session, deployment.id):
        if replica.arm == CANARY and replica.state != "draining":
            replica.arm = STABLE
            if replica.slot >= deployment.replicas:
                drain(session, replica, "promoted, more replicas than wanted")
    deployment.canary_state = "promoted"
    deployment.canary_weight = 0.0
    record(session, deployment, "promote", actor.name, reason, version=version)
    _roll(session, platform, project, actor, deployment, version, reason or "canary promoted")
    return deployment


def rollback(
    session: Session,
    platform: Platform,
    project: Project,
    actor_name: str,
    name: str,
    reason: str,
    *,
    auto: bool = False,
    figures: dict[str, Any] | None = None,
) -> Deployment:
    """Send all traffic back to the stable version and stop the canary's replicas."""
    deployment = get_deployment(session, project.id, name, lock=True)
    if deployment.canary_state not in ("starting", "running", "passed"):
        raise Conflict(f"deployment {name!r} runs no canary to roll back")
    for replica in replicas_of(session, deployment.id):
        if replica.arm == CANARY:
            drain(session, replica, "canary rolled back")
    deployment.canary_state = "rolled_back"
    deployment.canary_weight = 0.0
    record(
        session,
        deployment,
        "rollback",
        actor_name,
        reason,
        auto=auto,
        version=deployment.canary_version,
        figures=figures or {},
    )
    return deployment


# -- the reconciler ------------------------------------------------------------------------------


def reconcile(session: Session, platform: Platform) -> int:
    """One pass over every deployment (see the module docstring); returns how many changed."""
    changed = 0
    ids = list(session.scalars(select(Deployment.id).order_by(Deployment.id)))
    for deployment_id in ids:
        deployment = session.get(Deployment, deployment_id, with_for_update=True)
        if deployment is None:
            continue
        before = deployment.generation
        project = session.get(Project, deployment.project_id)
        if project is None:
            continue
        _reconcile_one(session, platform, project, deployment)
        changed += deployment.generation != before
    return changed


def _reconcile_one(
    session: Session, platform: Platform, project: Project, deployment: Deployment
) -> None:
    replicas = replicas_of(session, deployment.id)
    job_ids = [r.job_id for r in replicas if r.job_id is not None]
    states: dict[int, str] = job_states(session, job_ids) if job_ids else {}
    now = utcnow()
    for replica in replicas:
        job_state = states.get(replica.job_id) if replica.job_id else None
        if replica.state == "draining":
            if job_state not in LIVE_JOB:  # the row goes once its job has ended
                session.delete(replica)
                touch(deployment)
            elif replica.stop_at is None or replica.stop_at <= now:
                _cancel_jobs(session, platform, [replica])  # once; its job then ends
            continue
        if job_state not in LIVE_JOB:
            _restart(session, platform, project, deployment, replica, job_state)
    session.flush()
    advance_update(session, platform, project, deployment)
    if deployment.canary_state == "starting":
        ready = [r for r in replicas_of(session, deployment.id) if r.arm == CANARY]
        if any(r.state == "ready" for r in ready):
            deployment.canary_state = "running"
            deployment.canary_started_at = now
            record(
                session, deployment, "canary.running", RUNTIME_ACTOR, "a canary replica is ready"
            )


def _restart(
    session: Session,
    platform: Platform,
    project: Project,
    deployment: Deployment,
    replica: DeploymentReplica,
    job_state: str | None,
) -> None:
    reason = f"job {replica.job_id} ended ({job_state or 'gone'})"
    replica.restarts += 1
    submit_replica_job(session, platform, project, deployment, replica)
    record(
        session,
        deployment,
        "replica.restart",
        RUNTIME_ACTOR,
        reason,
        replica=replica.id,
        slot=replica.slot,
        job=replica.job_id,
    )


def advance_update(
    session: Session, platform: Platform, project: Project, deployment: Deployment
) -> None:
    """One step of a rolling update (see :mod:`underlay.serving.service`): drain old
    replicas that serve nothing, and a ready one for each new one ready beyond what the
    deployment wants; start new replicas while fewer than ``replicas + MAX_SURGE`` exist
    (draining ones count until their jobs end); switch once all of the new ones are ready."""
    target, want = deployment.target_version, deployment.replicas
    if target == deployment.version:
        return
    stable = [r for r in replicas_of(session, deployment.id) if r.arm == STABLE]
    new = [r for r in stable if r.version == target and r.state != "draining"]
    old = [r for r in stable if r.version != target and r.state != "draining"]
    ready_new = sum(r.state == "ready" for r in new)
    rolling = same_interface(session, deployment)
    if rolling:
        ready = ready_new + sum(r.state == "ready" for r in old)
        for replica in sorted(old, key=lambda r: (r.state == "ready", -r.slot)):
            if replica.state == "ready" and ready - 1 < want:
                continue  # maxUnavailable 0: it serves until a new one can take its place
            ready -= replica.state == "ready"
            drain(session, replica, f"replaced by version {target}")
            old.remove(replica)
            touch(deployment)
        have = {r.slot for r in new}
        room = want + MAX_SURGE - len(stable)
        for slot in [s for s in range(want) if s not in have][: max(0, room)]:
            add_replica(session, platform, project, deployment, slot, STABLE, target)
            touch(deployment)
    if ready_new < want or (rolling and old):
        return
    previous = deployment.version
    for replica in old:
        drain(session, replica, f"replaced by version {target}")
    deployment.version = target
    record(
        session,
        deployment,
        "update.done",
        RUNTIME_ACTOR,
        f"{ready_new} replicas of version {target} ready",
        previous=previous,
        version=target,
    )


def live_replica_jobs(session: Session) -> set[int]:
    """The ids of the live jobs that serve replicas, over every deployment."""
    rows = session.scalars(
        select(Job.id)
        .join(DeploymentReplica, DeploymentReplica.job_id == Job.id)
        .where(Job.state.in_(LIVE_JOB))
    )
    return {int(job_id) for job_id in rows}


def stopped_with_server(session: Session, job_ids: set[int]) -> None:
    """Mark the replicas served by ``job_ids`` as starting again (no URL: nothing routes to
    them); their jobs end when the next agent reports them, and :func:`reconcile` then starts
    new jobs for their slots (draining ones are simply removed)."""
    replicas = session.scalars(
        select(DeploymentReplica).where(DeploymentReplica.job_id.in_(sorted(job_ids)))
    )
    for replica in replicas:
        deployment = session.get(Deployment, replica.deployment_id)
        if replica.state != "draining":
            replica.state = "starting"
            replica.url = None
            replica.reason = f"job {replica.job_id} stopped with the server"
            replica.updated_at = utcnow()
        if deployment is not None:
            touch(deployment)

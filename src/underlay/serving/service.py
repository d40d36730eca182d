"""Deployments: deploy, read, list, scale, roll, canary, promote, roll back, remove.

Every change is one transaction that also appends a :class:`DeploymentEvent` (who, when, why)
and bumps the deployment's ``generation``; the route around it writes the audit entry. What a
change needs to happen over time (replicas starting, a rolling update switching over, old
replicas draining, crashed replicas restarting) is driven by :func:`reconcile`, which the
server's serving runtime calls every fraction of a second.

* **Verification first.** A deploy, update or canary verifies the model version's signed
  manifest and every file's bytes (the registry's ``verify_version``) before any row or job
  exists: an unsigned or tampered version is refused with a 4xx naming the file.
* **Replicas are service jobs** submitted through the compute scheduler: not preemptible, one
  ``app`` per deployment with ``max_per_node`` spreading them over the nodes, priority high.
  Each gets a random secret as a job secret (sealed in the job row and in the replica row); the
  server sends it on every call to the replica.
* **Rolling update** (``model`` in an update), driven by the reconciler
  (:func:`underlay.serving.lifecycle.advance_update`). When both versions take and return the
  same tensors (names, dtypes, shapes:
  :func:`underlay.serving.interfaces.same_interface`), replicas are replaced a few at
  a time, as Kubernetes does with ``maxSurge`` 1 and ``maxUnavailable`` 0: at most
  :data:`MAX_SURGE` replicas more than wanted exist at any time (draining ones count until their
  jobs end), a new replica starts only when there is room, and an old one drains only once a
  new one is ready, so the ready replicas never fall below what the deployment wants; the
  data plane routes to the ready replicas of both versions meanwhile. When the interfaces
  differ, a request validated for one version cannot go to the other: every new replica
  starts next to the old ones and traffic switches once they are all ready. Either way the
  old replicas drain for ``DRAIN_S`` before their jobs are cancelled (SIGTERM: they finish
  what they hold).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exc, func, select
from sqlalchemy.orm import Session

import underlay
from underlay import lineage
from underlay.compute import jobs
from underlay.compute.models import Job, NodeRow
from underlay.compute.schemas import JobCreate
from underlay.compute.states import JobState
from underlay.crypto import seal, unseal
from underlay.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from underlay.identity import SYSTEM, Actor, TokenKind
from underlay.ml.registry import service as registry
from underlay.ml.registry.manifest import ArtifactRefused
from underlay.ml.registry.models import ModelVersion
from underlay.platform import Platform
from underlay.serving.interfaces import routed_versions, same_interface
from underlay.serving.models import Deployment, DeploymentEvent, DeploymentReplica
from underlay.serving.schemas import (
    CanaryRead,
    DeploymentCreate,
    DeploymentEventRead,
    DeploymentRead,
    DeploymentUpdate,
    LimitsSet,
    ReplicaRead,
    TrafficRead,
)
from underlay.store.models import ApiToken, Project
from underlay.store.types import utcnow

SECRET_ENV = "REPLICA_SECRET"  # noqa: S105 - a variable name
DRAIN_S = 2.0
MAX_SURGE = 1  # replicas above the wanted count a rolling update may run (Kubernetes' default)
LIVE_JOB = (JobState.queued, JobState.admitted, JobState.running)
STABLE, CANARY = "stable", "canary"


def _aad(replica_id: int) -> bytes:
    return f"underlay replica secret v1 replica {replica_id}".encode()


def deployment_ref(name: str) -> lineage.ObjectRef:
    return lineage.ObjectRef("deployment", name)


def log_tables(name: str) -> list[str]:
    """The tables a deployment writes: its prediction log and its feedback."""
    from underlay.serving.predlog import feedback_table, predictions_table

    return [predictions_table(name), feedback_table(name)]


# -- reading -----------------------------------------------------------------------------------


def get_deployment(
    session: Session, project_id: int, name: str, *, lock: bool = False
) -> Deployment:
    query = select(Deployment).where(Deployment.project_id == project_id, Deployment.name == name)
    found = session.scalar(query.with_for_update() if lock else query)
    if found is None:
        raise NotFound(f"deployment {name[:80]!r} not found")
    return found


def list_deployments(session: Session, project_id: int) -> list[Deployment]:
    return list(
        session.scalars(
            select(Deployment).where(Deployment.project_id == project_id).order_by(Deployment.name)
        )
    )


def replicas_of(session: Session, deployment_id: int) -> list[DeploymentReplica]:
    return list(
        session.scalars(
            select(DeploymentReplica)
            .where(DeploymentReplica.deployment_id == deployment_id)
            .order_by(DeploymentReplica.arm.desc(), DeploymentReplica.slot, DeploymentReplica.id)
        )
    )


def job_states(session: Session, job_ids: list[int]) -> dict[int, str]:
    rows = session.execute(select(Job.id, Job.state).where(Job.id.in_(job_ids)))
    return {int(job_id): str(state) for job_id, state in rows}


def replica_secret(session: Session, platform: Platform, replica: DeploymentReplica) -> str:
    key = platform.keyring.data_key(session, replica.project_id, create=False)
    what = f"secret of replica {replica.id}"
    return unseal(key, replica.secret_sealed, _aad(replica.id), what).decode()


def list_events(session: Session, project_id: int, name: str) -> list[DeploymentEvent]:
    found = get_deployment(session, project_id, name)
    return list(
        session.scalars(
            select(DeploymentEvent)
            .where(DeploymentEvent.deployment_id == found.id)
            .order_by(DeploymentEvent.id)
        )
    )


def event_read(event: DeploymentEvent) -> DeploymentEventRead:
    return DeploymentEventRead(
        kind=event.kind,
        actor=event.actor,
        reason=event.reason,
        detail=json.loads(event.detail or "{}"),
        at=event.at,
    )


def settings_of(deployment: Deployment) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(deployment.settings or "{}")
    return value


def render(session: Session, project: Project, deployment: Deployment) -> DeploymentRead:
    """What ``deployments show`` prints: replicas with their state, traffic split, canary."""
    replicas = replicas_of(session, deployment.id)
    job_ids = [r.job_id for r in replicas if r.job_id is not None]
    states = job_states(session, job_ids) if job_ids else {}
    reads = [
        ReplicaRead(
            id=r.id,
            slot=r.slot,
            arm=r.arm,
            version=r.version,
            state=r.state,
            reason=r.reason,
            job_id=r.job_id,
            job_state=states.get(r.job_id) if r.job_id else None,
            restarts=r.restarts,
        )
        for r in replicas
    ]
    canary = None
    traffic = [TrafficRead(arm="stable", version=deployment.version, weight=1.0)]
    if deployment.canary_version is not None:
        weight = deployment.canary_weight if deployment.canary_state == "running" else 0.0
        traffic = [
            TrafficRead(arm="stable", version=deployment.version, weight=round(1.0 - weight, 6)),
            TrafficRead(arm="canary", version=deployment.canary_version, weight=weight),
        ]
        canary = CanaryRead(
            version=deployment.canary_version,
            weight=deployment.canary_weight,
            state=deployment.canary_state,
            started_at=deployment.canary_started_at,
            policy=json.loads(deployment.canary_policy or "{}"),
        )
    routed = routed_versions(session, deployment)
    stable = [r for r in replicas if r.arm == STABLE and r.version in routed]
    ready = sum(1 for r in stable if r.state == "ready")
    state = "ready" if ready >= deployment.replicas else ("degraded" if ready else "starting")
    if deployment.target_version != deployment.version:
        state = "updating"
    extra = settings_of(deployment)
    return DeploymentRead(
        name=deployment.name,
        project=project.name,
        model=deployment.model,
        version=deployment.version,
        target_version=deployment.target_version,
        state=state,
        endpoint=f"/api/v1/projects/{project.name}/deployments/{deployment.name}/predict",
        desired_replicas=deployment.replicas,
        ready_replicas=ready,
        replicas=reads,
        traffic=traffic,
        canary=canary,
        cpus=deployment.cpus,
        memory_mib=deployment.memory_mib,
        gpu_fraction=deployment.gpu_fraction,
        max_batch=deployment.max_batch,
        max_wait_ms=deployment.max_wait_ms,
        limits=LimitsSet(**extra.get("limits", {})),
        log_sample_rate=float(extra.get("log_sample_rate", 0.0)),
        input_ranges=str(extra.get("input_ranges", "ignore")),
        created_at=deployment.created_at,
        updated_at=deployment.updated_at,
    )


# -- changes ---------------------------------------------------------------------------------


def verified_version(
    session: Session, platform: Platform, project_id: int, ref: str
) -> ModelVersion:
    """The version ``ref`` names, after its signature and every file verified; a version that
    fails is refused with :class:`InvalidInput` naming the file (nothing is created)."""
    name, _, version_ref = ref.partition("@")
    version = registry.get_version(session, project_id, name, version_ref or "latest")
    try:
        registry.verify_version(session, platform.blobs, platform.signer, project_id, name, version)
    except ArtifactRefused as refused:
        raise InvalidInput(
            f"{refused.message}; deploy refused, no replica was started", file=refused.file
        ) from None
    return version


def record(
    session: Session, deployment: Deployment, kind: str, actor: str, reason: str, **detail: Any
) -> None:
    """Append an event and mark the deployment changed (every server process refreshes)."""
    session.add(
        DeploymentEvent(
            project_id=deployment.project_id,
            deployment_id=deployment.id,
            kind=kind,
            actor=actor[:64],
            reason=reason[:1000],
            detail=json.dumps(detail, default=str),
        )
    )
    touch(deployment)


def touch(deployment: Deployment) -> None:
    deployment.generation += 1
    deployment.updated_at = utcnow()


def deploy(
    session: Session, platform: Platform, project: Project, actor: Actor, body: DeploymentCreate
) -> Deployment:
    """A new deployment of a verified model version, and the jobs of its replicas."""
    version = verified_version(session, platform, project.id, body.model)
    model = body.model.partition("@")[0]
    deployment = Deployment(
        project_id=project.id,
        name=body.name,
        model=model,
        version=version.version,
        target_version=version.version,
        replicas=body.replicas,
        cpus=body.cpus,
        memory_mib=body.memory_mib,
        gpu_fraction=body.gpu_fraction,
        max_batch=body.max_batch,
        max_wait_ms=body.max_wait_ms,
        settings=json.dumps(
            {
                "limits": body.limits.model_dump(exclude_none=True),
                "log_sample_rate": body.log_sample_rate,
                "input_ranges": body.input_ranges,
            }
        ),
        created_by=actor.user_id or None,
    )
    try:
        with session.begin_nested():
            session.add(deployment)
    except exc.IntegrityError:
        raise Conflict(f"deployment {body.name!r} already exists in this project") from None
    for slot in range(body.replicas):
        add_replica(session, platform, project, deployment, slot, STABLE, version.version)
    lineage.add_edge(
        session,
        project.id,
        registry.version_ref(model, version.version),
        "deployed",
        deployment_ref(deployment.name),
    )
    for table in log_tables(deployment.name):  # the tables exist once something is logged
        ref = lineage.ObjectRef("table", table)
        lineage.add_edge(session, project.id, deployment_ref(deployment.name), "logs_to", ref)
    record(session, deployment, "deploy", actor.name, body.reason, version=version.version)
    return deployment


def add_replica(
    session: Session,
    platform: Platform,
    project: Project,
    deployment: Deployment,
    slot: int,
    arm: str,
    version: int,
) -> DeploymentReplica:
    replica = DeploymentReplica(
        project_id=project.id,
        deployment_id=deployment.id,
        slot=slot,
        arm=arm,
        version=version,
        secret_sealed=b"",
    )
    session.add(replica)
    session.flush()
    submit_replica_job(session, platform, project, deployment, replica)
    return replica


def submit_replica_job(
    session: Session,
    platform: Platform,
    project: Project,
    deployment: Deployment,
    replica: DeploymentReplica,
) -> None:
    """Submit the job that serves ``replica`` now, with a fresh secret."""
    secret = secrets.token_urlsafe(32)
    key = platform.keyring.data_key(session, project.id)
    replica.secret_sealed = seal(key, secret.encode(), _aad(replica.id))
    nodes = session.scalar(
        select(func.count()).select_from(NodeRow).where(NodeRow.status == "ready")
    )
    wanted = deployment.replicas + (1 if deployment.canary_version is not None else 0)
    body = JobCreate(
        command=[
            sys.executable,
            "-m",
            "underlay.serving.replica",
            "--project",
            project.name,
            "--deployment",
            deployment.name,
            "--replica",
            str(replica.id),
            "--model",
            f"{deployment.model}@{replica.version}",
        ],
        name=f"serve-{deployment.name}-{replica.arm}-{replica.slot}"[:128],
        env={"PYTHONPATH": str(Path(underlay.__file__).resolve().parent.parent)},
        secrets={SECRET_ENV: secret},
        cpus=deployment.cpus,
        memory_mib=deployment.memory_mib,
        gpu_fraction=deployment.gpu_fraction,
        priority="high",
        preemptible=False,
        app=f"deployment-{deployment.id}",
        max_per_node=max(1, math.ceil(2 * wanted / max(1, int(nodes or 1)))),
    )
    owner = Actor(user_id=deployment.created_by or 0, name="serving", is_admin=False)
    job, _ = jobs.submit_job(
        session, project, owner, body, keyring=platform.keyring, settings=platform.settings
    )
    replica.job_id = job.id
    replica.url = None
    replica.state = "starting"
    replica.reason = f"job {job.id} submitted"
    replica.updated_at = utcnow()


def update_deployment(
    session: Session,
    platform: Platform,
    project: Project,
    actor: Actor,
    name: str,
    body: DeploymentUpdate,
) -> Deployment:
    """Scale, roll to another version, or change limits (see the module docstring)."""
    deployment = get_deployment(session, project.id, name, lock=True)
    if body.model is not None:
        version = verified_version(session, platform, project.id, body.model)
        model = body.model.partition("@")[0]
        if model != deployment.model:
            raise InvalidInput(
                f"deployment {name!r} serves model {deployment.model!r}; deploy {model!r} "
                "as another deployment"
            )
        if version.version != deployment.target_version:
            _roll(session, platform, project, actor, deployment, version.version, body.reason)
    if body.replicas is not None and body.replicas != deployment.replicas:
        _scale(session, platform, project, actor, deployment, body.replicas, body.reason)
    if body.limits is not None or body.log_sample_rate is not None:
        extra = settings_of(deployment)
        if body.limits is not None:
            extra["limits"] = body.limits.model_dump(exclude_none=True)
        if body.log_sample_rate is not None:
            extra["log_sample_rate"] = body.log_sample_rate
        deployment.settings = json.dumps(extra)
        record(session, deployment, "settings", actor.name, body.reason, **extra)
    return deployment


def _roll(
    session: Session,
    platform: Platform,
    project: Project,
    actor: Actor,
    deployment: Deployment,
    version: int,
    reason: str,
) -> None:
    # replicas of an earlier unfinished update go; the serving version's stay until switch
    for replica in replicas_of(session, deployment.id):
        if replica.arm == STABLE and replica.version not in (deployment.version, version):
            drain(session, replica, "superseded by another update")
    previous = deployment.version
    deployment.target_version = version
    if version == deployment.version:  # back to the version still serving: nothing to switch
        for replica in replicas_of(session, deployment.id):
            if replica.arm == STABLE and replica.version != version:
                drain(session, replica, "update cancelled")
    elif not same_interface(session, deployment):  # no mixed traffic: all at once, then switch
        have = {
            r.slot
            for r in replicas_of(session, deployment.id)
            if r.arm == STABLE and r.version == version and r.state != "draining"
        }
        for slot in range(deployment.replicas):
            if slot not in have:
                add_replica(session, platform, project, deployment, slot, STABLE, version)
    # else the reconciler replaces the replicas a few at a time (lifecycle.advance_update)
    record(session, deployment, "update", actor.name, reason, previous=previous, version=version)


def _scale(
    session: Session,
    platform: Platform,
    project: Project,
    actor: Actor,
    deployment: Deployment,
    count: int,
    reason: str,
) -> None:
    previous = deployment.replicas
    deployment.replicas = count
    versions = {deployment.version, deployment.target_version}
    live = [
        r
        for r in replicas_of(session, deployment.id)
        if r.arm == STABLE and r.version in versions and r.state != "draining"
    ]
    for replica in live:
        if replica.slot >= count:
            drain(session, replica, "scaled down")
    rolling = len(versions) > 1 and same_interface(session, deployment)
    # rolling: a slot either version serves is covered (the update replaces the old ones)
    for version in [deployment.version] if rolling else sorted(versions):
        slots = {r.slot for r in live if rolling or r.version == version}
        for slot in range(count):
            if slot not in slots:
                add_replica(session, platform, project, deployment, slot, STABLE, version)
    record(session, deployment, "scale", actor.name, reason, previous=previous, replicas=count)


def drain(session: Session, replica: DeploymentReplica, reason: str) -> None:
    """Stop routing to ``replica`` now and stop its job once what it holds is done."""
    if replica.state == "draining":
        return
    replica.state = "draining"
    replica.reason = reason
    replica.stop_at = utcnow() + dt.timedelta(seconds=DRAIN_S)
    replica.updated_at = utcnow()


def delete_deployment(
    session: Session, platform: Platform, project: Project, actor: Actor, name: str
) -> int:
    """Remove a deployment: its replicas' jobs are cancelled (they drain on SIGTERM), its rows,
    lineage edges and log tables (prediction log and feedback, their files once the
    transaction commits) go. Returns how many replica jobs were stopped."""
    from underlay.data.models import DataTable
    from underlay.data.tables import TableStore

    deployment = get_deployment(session, project.id, name, lock=True)
    stopped = _cancel_jobs(session, platform, replicas_of(session, deployment.id))
    lineage.delete_edges_for(session, project.id, deployment_ref(deployment.name))
    store = TableStore(platform.settings)
    for table_name in log_tables(deployment.name):
        lineage.delete_edges_for(session, project.id, lineage.ObjectRef("table", table_name))
        table = session.scalar(
            select(DataTable).where(
                DataTable.project_id == project.id, DataTable.name == table_name
            )
        )
        if table is not None:
            store.remove(session, table)
    session.execute(delete(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment.id))
    session.execute(
        delete(DeploymentReplica).where(DeploymentReplica.deployment_id == deployment.id)
    )
    session.delete(deployment)
    return stopped


def purge_project(session: Session, platform: Platform, project: Project) -> None:
    for deployment in list_deployments(session, project.id):
        delete_deployment(session, platform, project, SYSTEM, deployment.name)


def _cancel_jobs(
    session: Session, platform: Platform, replicas: Iterable[DeploymentReplica]
) -> int:
    stopped = 0
    for replica in replicas:
        if replica.job_id is None:
            continue
        job = session.get(Job, replica.job_id)
        if job is not None and job.state in LIVE_JOB:
            jobs.cancel_job(session, platform.audit, job, SYSTEM, platform.settings.compute.grace_s)
            stopped += 1
    return stopped


# -- replicas report themselves ----------------------------------------------------------------


def report_replica(
    session: Session, project: Project, actor: Actor, name: str, replica_id: int, url: str
) -> DeploymentReplica:
    """Record the URL a replica serves on; only the token of the job serving it is heard."""
    deployment = get_deployment(session, project.id, name, lock=True)
    replica = session.get(DeploymentReplica, replica_id)
    if replica is None or replica.deployment_id != deployment.id:
        raise NotFound(f"replica {replica_id} of deployment {name!r} not found")
    token = session.get(ApiToken, actor.token_id) if actor.token_id else None
    prefix = f"job-{replica.job_id}-"
    if (
        actor.kind is not TokenKind.job
        or token is None
        or token.project_id != project.id
        or not token.name.startswith(prefix)
        or not token.name[len(prefix) :].isdigit()
    ):
        raise PermissionDenied(f"only the job serving replica {replica_id} may report its address")
    if replica.state == "draining":
        raise Conflict(f"replica {replica_id} is draining")
    replica.url = url
    replica.state = "ready"
    replica.reason = "serving"
    replica.updated_at = utcnow()
    touch(deployment)
    return replica

"""What the data plane reads from the database: a deployment's view (off the hot path, once
per change) and the generations of the deployments it caches (one query per refresh)."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.ml.flavors.signature import Signature
from underlay.ml.registry.models import ModelVersion, RegisteredModel
from underlay.platform import Platform
from underlay.serving.dataplane import Arm, DeploymentView, Endpoint
from underlay.serving.models import Deployment
from underlay.serving.service import CANARY, STABLE, replica_secret, replicas_of, settings_of
from underlay.store.models import Project


def generations(session: Session, ids: list[int]) -> dict[int, int]:
    rows = session.execute(
        select(Deployment.id, Deployment.generation).where(Deployment.id.in_(ids))
    )
    return {int(i): int(g) for i, g in rows}


def _signature(session: Session, project_id: int, model: str, version: int) -> Signature | None:
    raw = session.scalar(
        select(ModelVersion.signature)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(
            RegisteredModel.project_id == project_id,
            RegisteredModel.name == model,
            ModelVersion.version == version,
        )
    )
    return Signature.from_dict(json.loads(raw or "{}"))


def read_view(
    session: Session, platform: Platform, project: str, name: str
) -> DeploymentView | None:
    """The deployment as the data plane serves it: ready replicas by arm, with their secrets."""
    found = session.scalar(select(Project).where(Project.name == project))
    if found is None:
        return None
    deployment = session.scalar(
        select(Deployment).where(Deployment.project_id == found.id, Deployment.name == name)
    )
    if deployment is None:
        return None
    stable = Arm(STABLE, deployment.version, [])
    canary = None
    if deployment.canary_state == "running" and deployment.canary_version is not None:
        canary = Arm(CANARY, deployment.canary_version, [])
    for replica in replicas_of(session, deployment.id):
        if replica.state != "ready" or not replica.url:
            continue
        endpoint = Endpoint(replica.id, replica.url, replica_secret(session, platform, replica))
        if replica.arm == STABLE and replica.version == deployment.version:
            stable.endpoints.append(endpoint)
        elif canary is not None and replica.arm == CANARY and replica.version == canary.version:
            canary.endpoints.append(endpoint)
    return DeploymentView(
        project=project,
        project_id=found.id,
        name=name,
        id=deployment.id,
        model=deployment.model,
        version=deployment.version,
        generation=deployment.generation,
        signature=_signature(session, found.id, deployment.model, deployment.version),
        max_batch=deployment.max_batch,
        max_wait_ms=deployment.max_wait_ms,
        settings=settings_of(deployment),
        stable=stable,
        canary=canary,
        canary_weight=deployment.canary_weight if canary is not None else 0.0,
        extra={"canary_policy": json.loads(deployment.canary_policy or "{}")},
    )

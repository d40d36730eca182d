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
from underlay.serving.interfaces import routed_versions
from underlay.serving.limits import LimitSpec
from underlay.serving.models import Deployment
from underlay.serving.service import (
    CANARY,
    STABLE,
    replica_secret,
    replicas_of,
    settings_of,
)
from underlay.serving.v2 import RangePolicy, compile_signature
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
    rolling = None
    if len(routed_versions(session, deployment)) > 1:
        rolling = Arm(STABLE, deployment.target_version, [])
    for replica in replicas_of(session, deployment.id):
        if replica.state != "ready" or not replica.url:
            continue
        endpoint = Endpoint(replica.id, replica.url, replica_secret(session, platform, replica))
        if replica.arm == STABLE and replica.version == deployment.version:
            stable.endpoints.append(endpoint)
        elif rolling is not None and replica.arm == STABLE and replica.version == rolling.version:
            rolling.endpoints.append(endpoint)
        elif canary is not None and replica.arm == CANARY and replica.version == canary.version:
            canary.endpoints.append(endpoint)
    signature = _signature(session, found.id, deployment.model, deployment.version)
    extra = settings_of(deployment)
    ranges: RangePolicy = "reject" if extra.get("input_ranges") == "reject" else "ignore"
    limits = extra.get("limits") or {}
    spec = None
    if limits.get("rate_per_s") is not None or limits.get("daily_budget") is not None:
        spec = LimitSpec(
            rate_per_s=limits.get("rate_per_s"),
            burst=int(limits.get("burst") or 100),
            daily_budget=limits.get("daily_budget"),
        )
    canary_key = None
    if canary is not None:
        canary_key = (deployment.canary_version, str(deployment.canary_started_at))
    return DeploymentView(
        project=project,
        project_id=found.id,
        name=name,
        id=deployment.id,
        model=deployment.model,
        version=deployment.version,
        generation=deployment.generation,
        signature=signature,
        compiled=compile_signature(signature, ranges=ranges) if signature else None,
        max_batch=deployment.max_batch,
        max_wait_ms=deployment.max_wait_ms,
        settings=extra,
        stable=stable,
        canary=canary,
        canary_weight=deployment.canary_weight if canary is not None else 0.0,
        rolling=rolling,
        extra={
            "canary_policy": json.loads(deployment.canary_policy or "{}"),
            "canary_key": canary_key,
            "limit_spec": spec,
            "created_by": deployment.created_by,
        },
    )

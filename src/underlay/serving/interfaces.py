"""Whether two versions of a deployment's model may share its traffic: the same interface.

During a rolling update the ready replicas of the serving and the target version share the
stable traffic (:mod:`underlay.serving.service`), which is safe only when both take and
return the same tensors: a request is validated against the serving version's signature and
may be answered by either. Names, dtypes and shapes must match; the ranges seen in training
may differ.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.ml.registry.models import ModelVersion, RegisteredModel
from underlay.serving.models import Deployment


def _interface(session: Session, project_id: int, model: str, version: int) -> Any:
    raw = session.scalar(
        select(ModelVersion.signature)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(
            RegisteredModel.project_id == project_id,
            RegisteredModel.name == model,
            ModelVersion.version == version,
        )
    )
    signature = json.loads(raw or "{}") or {}
    return [
        [(t.get("name"), t.get("dtype"), t.get("shape")) for t in signature.get(side, [])]
        for side in ("inputs", "outputs")
    ]


def same_interface(session: Session, deployment: Deployment) -> bool:
    """Whether the serving and the target version take and return the same tensors (names,
    dtypes, shapes; the ranges seen in training may differ), so that both may serve the
    deployment's traffic during a rolling update."""
    model, project_id = deployment.model, deployment.project_id
    serving = _interface(session, project_id, model, deployment.version)
    target = _interface(session, project_id, model, deployment.target_version)
    return bool(serving[0]) and serving == target


def routed_versions(session: Session, deployment: Deployment) -> set[int]:
    """The versions whose ready stable replicas take the deployment's stable traffic."""
    if deployment.target_version != deployment.version and same_interface(session, deployment):
        return {deployment.version, deployment.target_version}
    return {deployment.version}

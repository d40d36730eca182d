"""``POST /projects/{p}/deployments/{d}/feedback``: ground-truth labels by request id, stored
in the deployment's feedback table (rules and schema: :mod:`underlay.serving.feedback`)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.routes.tables import Tables
from underlay.errors import UnderlayError
from underlay.identity import Action
from underlay.platform import audit_text
from underlay.serving import feedback, service
from underlay.serving.schemas import FeedbackCreate, FeedbackRead

router = APIRouter(prefix="/projects/{project}/deployments", tags=["deployments"])


@router.post("/{name}/feedback", response_model=FeedbackRead)
def send_feedback(
    project: str,
    name: Annotated[str, Path(max_length=63)],
    body: FeedbackCreate,
    ctx: Ctx,
    store: Tables,
) -> FeedbackRead:
    """Store labels by request id (and row); a label for a request the prediction log does
    not hold is accepted and counted in ``unlogged`` (the log is sampled)."""
    action, resource = "deployment.feedback", f"project:{project}/deployment:{audit_text(name)}"
    with ctx.unit(action, resource, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        project_id = service.get_deployment(u.session, found.id, name).project_id
    labels = [feedback.Label(i.request_id, i.label, i.row) for i in body.labels]
    try:
        result = feedback.record_feedback(
            ctx.platform.db,
            store,
            ctx.platform.keyring,
            project_id,
            name,
            labels,
            now=time.time(),
            created_by=ctx.actor.user_id or None,
            require_deployment=True,
        )
    except UnderlayError as error:
        with ctx.unit(action, resource, project=project):
            raise error from None  # audited as refused, with the reason
    with ctx.unit(action, resource, project=project) as u:
        u.detail = result.to_dict()
    return FeedbackRead(**result.to_dict())

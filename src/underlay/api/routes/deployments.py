"""Deployments of a project: the control routes (deploy, read, scale, roll, canary, promote,
roll back, remove, events), the replicas' address reports, and the JSON predict route of the
data plane (:mod:`underlay.serving.dataplane`).

Another project's deployments answer exactly as missing ones do (the project lookup refuses
first). The predict route authenticates through the data plane's cache instead of a
per-request database session.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.problems import error_response
from underlay.errors import UnderlayError
from underlay.identity import Action
from underlay.platform import audit_text
from underlay.serving import lifecycle, service
from underlay.serving.dataplane import dataplane_of
from underlay.serving.schemas import (
    CanaryStart,
    ChangeReason,
    DeploymentCreate,
    DeploymentEventRead,
    DeploymentRead,
    DeploymentUpdate,
    PredictResponse,
    ReplicaReport,
)

router = APIRouter(prefix="/projects/{project}/deployments", tags=["deployments"])

DeploymentName = Annotated[str, Path(max_length=63)]
ReplicaId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _resource(project: str, name: str) -> str:
    return f"project:{project}/deployment:{audit_text(name)}"


def _changed(ctx: Ctx, request: Request, project: str, name: str) -> None:
    """After a change: schedule its jobs now, reconcile now, drop this process's cached view."""
    ctx.platform.wake_scheduler()
    request.app.state.serving.wake()
    dataplane_of(request).forget(project, name)


@router.post("", response_model=DeploymentRead, status_code=201)
def deploy(project: str, body: DeploymentCreate, ctx: Ctx, request: Request) -> DeploymentRead:
    """Deploy a verified model version (``MODEL@ALIAS``) on ``replicas`` replica jobs."""
    with ctx.unit("deployment.create", _resource(project, body.name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        deployment = service.deploy(u.session, ctx.platform, found, ctx.actor, body)
        u.detail = {"model": deployment.model, "version": deployment.version}
        result = service.render(u.session, found, deployment)
    _changed(ctx, request, project, body.name)
    return result


@router.get("", response_model=list[DeploymentRead])
def list_deployments(project: str, ctx: Ctx) -> list[DeploymentRead]:
    with ctx.unit("deployment.list", f"project:{project}/deployments", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        rows = service.list_deployments(u.session, found.id)
        return [service.render(u.session, found, d) for d in rows]


@router.get("/{name}", response_model=DeploymentRead)
def read_deployment(project: str, name: DeploymentName, ctx: Ctx) -> DeploymentRead:
    with ctx.unit("deployment.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return service.render(u.session, found, service.get_deployment(u.session, found.id, name))


@router.patch("/{name}", response_model=DeploymentRead)
def update_deployment(
    project: str, name: DeploymentName, body: DeploymentUpdate, ctx: Ctx, request: Request
) -> DeploymentRead:
    """Scale (``replicas``), roll to another version (``model``: no request is dropped), or
    change the limits."""
    with ctx.unit("deployment.update", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        deployment = service.update_deployment(
            u.session, ctx.platform, found, ctx.actor, name, body
        )
        u.detail = body.model_dump(exclude_none=True)
        result = service.render(u.session, found, deployment)
    _changed(ctx, request, project, name)
    return result


@router.delete("/{name}", status_code=204)
def delete_deployment(project: str, name: DeploymentName, ctx: Ctx, request: Request) -> Response:
    with ctx.unit("deployment.delete", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        u.detail = {
            "stopped": service.delete_deployment(u.session, ctx.platform, found, ctx.actor, name)
        }
    _changed(ctx, request, project, name)
    return Response(status_code=204)


@router.post("/{name}/canary", response_model=DeploymentRead)
def start_canary(
    project: str, name: DeploymentName, body: CanaryStart, ctx: Ctx, request: Request
) -> DeploymentRead:
    """Start a canary: another version takes ``weight`` of the traffic, watched by a policy
    that rolls it back by itself when its error rate or p99 latency breaches the limits."""
    with ctx.unit("deployment.canary", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        deployment = lifecycle.start_canary(u.session, ctx.platform, found, ctx.actor, name, body)
        u.detail = {"version": deployment.canary_version, "weight": body.weight}
        result = service.render(u.session, found, deployment)
    _changed(ctx, request, project, name)
    return result


@router.post("/{name}/promote", response_model=DeploymentRead)
def promote(
    project: str, name: DeploymentName, body: ChangeReason, ctx: Ctx, request: Request
) -> DeploymentRead:
    with ctx.unit("deployment.promote", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        deployment = lifecycle.promote(u.session, ctx.platform, found, ctx.actor, name, body.reason)
        result = service.render(u.session, found, deployment)
    _changed(ctx, request, project, name)
    return result


@router.post("/{name}/rollback", response_model=DeploymentRead)
def rollback(
    project: str, name: DeploymentName, body: ChangeReason, ctx: Ctx, request: Request
) -> DeploymentRead:
    with ctx.unit("deployment.rollback", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        deployment = lifecycle.rollback(
            u.session, ctx.platform, found, ctx.actor.name, name, body.reason
        )
        u.detail = {"auto": False, "version": deployment.canary_version}
        result = service.render(u.session, found, deployment)
    _changed(ctx, request, project, name)
    return result


@router.get("/{name}/events", response_model=list[DeploymentEventRead])
def list_events(project: str, name: DeploymentName, ctx: Ctx) -> list[DeploymentEventRead]:
    with ctx.unit("deployment.events", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [service.event_read(e) for e in service.list_events(u.session, found.id, name)]


@router.get("/{name}/stats")
def deployment_stats(
    project: str, name: DeploymentName, ctx: Ctx, request: Request
) -> dict[str, Any]:
    """This server process's counters of the deployment: requests and errors by status,
    latency and batch-size figures, the canary's figures and the prediction log's counts."""
    with ctx.unit("deployment.stats", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        deployment_id = service.get_deployment(u.session, found.id, name).id
    return dataplane_of(request).guards.snapshot(deployment_id)


@router.post("/{name}/replicas/{replica}/report", status_code=204, include_in_schema=False)
def report_replica(
    project: str,
    name: DeploymentName,
    replica: ReplicaId,
    body: ReplicaReport,
    ctx: Ctx,
    request: Request,
) -> Response:
    """A replica's address, from the replica's own job token only."""
    with ctx.unit("deployment.replica.report", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        service.report_replica(u.session, found, ctx.actor, name, replica, body.url)
        u.detail = {"replica": replica}
    _changed(ctx, request, project, name)
    return Response(status_code=204)


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"example": {"records": [{"x1": 0.5, "x2": 1.0}]}}}
        }
    },
)
async def predict(project: str, name: DeploymentName, request: Request) -> Response:
    """``{"records": [...]}`` -> ``{"predictions": [...], "model_version", "request_id"}``."""
    return await predict_response(request, project, name)


async def predict_response(request: Request, project: str, name: str) -> Response:
    """The predict route's answer (also served by :mod:`underlay.api.hot`)."""
    try:
        body = await dataplane_of(request).predict_json(request, project, name)
    except UnderlayError as exc:
        return error_response(request, exc)
    return Response(body, media_type="application/json")

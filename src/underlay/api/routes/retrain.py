"""The retraining loop of a deployment: its policy, its plan (a dry run), its runs, and the
approval of a run that waits for one (see :mod:`underlay.monitoring.loop`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from underlay import identity
from underlay.api.deps import Ctx
from underlay.identity import Action
from underlay.monitoring import loop
from underlay.monitoring.loop_schemas import PolicyRead, PolicySet, RunRead, RunStart
from underlay.platform import audit_text

router = APIRouter(prefix="/projects/{project}", tags=["monitoring"])
Name = Annotated[str, Path(max_length=63)]
RunId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def _resource(project: str, name: str) -> str:
    return f"project:{project}/deployment:{audit_text(name)}/retrain"


def _wake(request: Request) -> None:
    driver = getattr(request.app.state, "retrain", None)
    if driver is not None:
        driver.wake()


@router.put("/deployments/{name}/retrain-policy", response_model=PolicyRead)
def set_policy(project: str, name: Name, body: PolicySet, ctx: Ctx) -> PolicyRead:
    """Create or replace the deployment's retrain policy."""
    with ctx.unit("retrain.policy.set", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        policy = loop.set_policy(u.session, ctx.platform, found, ctx.actor, name, body)
        u.detail = {"pipeline": body.pipeline, "mode": body.mode, "margin": body.margin}
        return loop.render_policy(policy)


@router.get("/deployments/{name}/retrain-policy", response_model=PolicyRead)
def read_policy(project: str, name: Name, ctx: Ctx) -> PolicyRead:
    with ctx.unit("retrain.policy.read", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        policy = loop.read_policy(u.session, found, name)
        assert policy is not None
        return loop.render_policy(policy)


@router.post("/deployments/{name}/retrain-plan")
def plan(project: str, name: Name, body: RunStart, ctx: Ctx) -> dict[str, Any]:
    """What the loop would do now, step by step (a dry run: nothing is written)."""
    with ctx.unit("retrain.plan", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return loop.plan(u.session, ctx.platform, found, name, body.drift)


@router.post("/deployments/{name}/retrain-runs", response_model=RunRead, status_code=201)
def start_run(project: str, name: Name, body: RunStart, ctx: Ctx, request: Request) -> RunRead:
    """Start a run now: with ``drift`` when that summary crosses the policy, else by hand."""
    with ctx.unit("retrain.start", _resource(project, name), project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        trigger = loop.manual_trigger(u.session, ctx.platform, found, name, body)
        run = loop.start_run(u.session, ctx.platform, found, ctx.actor, name, trigger)
        u.detail = {"run": run.id, "reason": trigger["reason"][:300]}
        result = loop.render_run(run)
    _wake(request)
    return result


@router.get("/deployments/{name}/retrain-runs", response_model=list[RunRead])
def list_runs(project: str, name: Name, ctx: Ctx) -> list[RunRead]:
    with ctx.unit("retrain.list", _resource(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [loop.render_run(r) for r in loop.list_runs(u.session, found, name)]


@router.get("/retrain-runs/{run_id}", response_model=RunRead)
def read_run(project: str, run_id: RunId, ctx: Ctx) -> RunRead:
    with ctx.unit("retrain.read", f"project:{project}/retrain:{run_id}", audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return loop.render_run(loop.read_run(u.session, found, run_id))


@router.post("/retrain-runs/{run_id}/approve", response_model=RunRead)
def approve(project: str, run_id: RunId, ctx: Ctx, request: Request) -> RunRead:
    """Approve a run waiting in ``awaiting_approval``: its canary starts."""
    with ctx.unit("retrain.approve", f"project:{project}/retrain:{run_id}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        result = loop.render_run(loop.approve(u.session, ctx.platform, found, ctx.actor, run_id))
    ctx.platform.wake_scheduler()
    _wake(request)
    return result


@router.post("/retrain-runs/{run_id}/abandon", response_model=RunRead)
def abandon(project: str, run_id: RunId, ctx: Ctx, request: Request) -> RunRead:
    """Stop a run; a canary it started is rolled back, the champion stays."""
    with ctx.unit("retrain.abandon", f"project:{project}/retrain:{run_id}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        result = loop.render_run(loop.abandon(u.session, ctx.platform, found, ctx.actor, run_id))
    _wake(request)
    return result

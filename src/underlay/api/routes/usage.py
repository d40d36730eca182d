"""Quotas (global admins set them), budgets (project admins), and the usage ledger."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from underlay import identity
from underlay.api.deps import Ctx
from underlay.compute import budgets, ledger, quotas
from underlay.compute.schemas import BudgetSet, QuotaRead, QuotaSet, UsageRead
from underlay.identity import Action, authorize
from underlay.store.types import utcnow

router = APIRouter(tags=["usage"])
TypeName = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


@router.put("/projects/{project}/quotas/{accelerator_type}", response_model=QuotaRead)
def set_quota(project: str, accelerator_type: TypeName, body: QuotaSet, ctx: Ctx) -> QuotaRead:
    resource = f"project:{project}/quota:{accelerator_type}"
    with ctx.unit("quota.set", resource, project=project) as u:
        authorize(ctx.actor, Action.admin)
        found = identity.read_project(u.session, project, ctx.actor)
        row = quotas.set_quota(
            u.session, found, accelerator_type, body.guaranteed, body.borrow_limit
        )
        u.detail = body.model_dump()
        return QuotaRead.model_validate(row)


@router.get("/projects/{project}/quotas", response_model=list[QuotaRead])
def list_quotas(project: str, ctx: Ctx) -> list[QuotaRead]:
    with ctx.unit("quota.list", f"project:{project}/quotas", project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [QuotaRead.model_validate(q) for q in quotas.list_quotas(u.session, found)]


@router.put("/projects/{project}/budget")
def set_budget(project: str, body: BudgetSet, ctx: Ctx) -> dict[str, Any]:
    with ctx.unit("budget.set", f"project:{project}/budget", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.manage)
        budgets.set_budget(
            u.session,
            found.id,
            gpu_hours_per_month=body.gpu_hours_per_month,
            money_per_month=body.money_per_month,
            warn_fraction=body.warn_fraction,
        )
        u.detail = body.model_dump()
        return budgets.budget_status(u.session, found.id, utcnow(), ctx.platform.settings).to_dict()


@router.get("/projects/{project}/budget")
def read_budget(project: str, ctx: Ctx) -> dict[str, Any]:
    with ctx.unit("budget.read", f"project:{project}/budget", project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return budgets.budget_status(u.session, found.id, utcnow(), ctx.platform.settings).to_dict()


@router.get("/usage", response_model=list[UsageRead])
def usage(
    ctx: Ctx,
    project: Annotated[str | None, Query(max_length=64)] = None,
    user: Annotated[str | None, Query(max_length=64)] = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    group_by: Literal["project", "user", "job"] | None = None,
) -> list[UsageRead]:
    """GPU-hours, energy, cost and carbon, summed over the caller's projects."""
    with ctx.unit("usage.read", "usage", project=project, audited=False) as u:
        project_id = user_id = None
        if project is not None:
            project_id = identity.read_project(u.session, project, ctx.actor).id
        if user is not None:
            if user != ctx.actor.name:
                authorize(ctx.actor, Action.admin)
            user_id = identity.read_user(u.session, user).id
        rows = ledger.usage_summary(
            u.session,
            project_id=project_id,
            user_id=user_id,
            since=since,
            until=until,
            group_by=group_by,
        )
        currency = ctx.platform.settings.compute.currency
        return [UsageRead.model_validate({**row.to_dict(), "currency": currency}) for row in rows]

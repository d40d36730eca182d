"""The audit log: listing and chain verification, for global admins."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from underlay.api.deps import Ctx
from underlay.identity import Action, authorize
from underlay.schemas import AuditEntryRead, AuditReportRead

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditEntryRead])
def list_audit(
    ctx: Ctx,
    actor: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    project: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    outcome: Literal["ok", "denied", "error"] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    after_seq: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    before_seq: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    order: Annotated[
        Literal["asc", "desc"], Query(description="asc: oldest first; desc: newest first.")
    ] = "asc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryRead]:
    """Entries matching every filter (``until`` and ``before_seq`` exclusive); page forward
    with ``after_seq``, or back from the newest with ``order=desc`` and ``before_seq``."""
    with ctx.unit("audit.list", "audit") as u:
        authorize(ctx.actor, Action.admin)
        entries = ctx.platform.audit.list_entries(
            u.session,
            actor=actor,
            action=action,
            project=project,
            outcome=outcome,
            since=since,
            until=until,
            limit=limit,
            after_seq=after_seq,
            before_seq=before_seq,
            newest_first=order == "desc",
        )
        return [AuditEntryRead.model_validate(e) for e in entries]


@router.get("/verify", response_model=AuditReportRead)
def verify_audit(ctx: Ctx) -> AuditReportRead:
    """Walk the whole hash chain and every signed checkpoint."""
    with ctx.unit("audit.verify", "audit", audited=False):
        authorize(ctx.actor, Action.admin)
    report = ctx.platform.audit.verify(ctx.platform.signer.public_key_bytes())
    with ctx.unit("audit.verify", "audit") as u:
        u.detail = {"ok": report.ok, "first_bad_seq": report.first_bad_seq}
    return AuditReportRead.model_validate(report)

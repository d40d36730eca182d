"""``/audit``: the audit log for global admins, newest first, with filters, paged by
``seq`` (no offset scans), and the hash chain's verification on request."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from underlay.api.deps import client_address
from underlay.audit import AuditReport
from underlay.identity import Action, authorize
from underlay.schemas import AuditEntryRead
from underlay.ui.auth import Caller, PlatformDep
from underlay.ui.pagination import PER_PAGE
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)
Text = Annotated[str, Query(max_length=64, pattern=r"^[^\x00]*$")]


@router.get("/audit")
def list_audit(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    actor: Text = "",
    action: Text = "",
    project: Text = "",
    outcome: Literal["", "ok", "denied", "error"] = "",
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    verify: bool = False,
) -> HTMLResponse:
    client = client_address(request)
    with platform.unit(caller.actor, "audit.list", "audit", client=client) as u:
        authorize(caller.actor, Action.admin)
        entries = platform.audit.list_entries(
            u.session,
            actor=actor or None,
            action=action or None,
            project=project or None,
            outcome=outcome or None,
            limit=PER_PAGE + 1,
            before_seq=before,
            newest_first=True,
        )
        rows = [AuditEntryRead.model_validate(e) for e in entries[:PER_PAGE]]
    report: AuditReport | None = None
    if verify:
        report = platform.audit.verify(platform.signer.public_key_bytes())
        with platform.unit(caller.actor, "audit.verify", "audit", client=client) as u:
            u.detail = {"ok": report.ok, "first_bad_seq": report.first_bad_seq}
    filters = {"actor": actor, "action": action, "project": project, "outcome": outcome}
    kept = {k: v for k, v in filters.items() if v}
    older = None
    if len(entries) > PER_PAGE:
        older = "/audit?" + urlencode({**kept, "before": rows[-1].seq})
    return render(
        request,
        "audit.html",
        caller,
        entries=rows,
        filters=filters,
        older=older,
        newest="/audit?" + urlencode(kept) if before else None,
        report=report,
    )

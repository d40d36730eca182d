"""``/nodes``: the fleet, each node with its accelerators' utilisation, power and temperature."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from underlay.compute import nodes
from underlay.compute.schemas import NodeRead
from underlay.ui.auth import Caller, PlatformDep
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)


def fleet(session: Session) -> list[NodeRead]:
    """Every node and its accelerators (what ``GET /api/v1/nodes`` answers)."""
    return [NodeRead.model_validate(nodes.node_detail(n, a)) for n, a in nodes.list_nodes(session)]


def fleet_totals(fleet: list[NodeRead]) -> dict[str, Any]:
    accs = [a for n in fleet for a in n.accelerators]
    powers = [a.power_watts for a in accs if a.power_watts is not None]
    return {
        "nodes": len(fleet),
        "ready": sum(1 for n in fleet if n.status == "ready"),
        "accelerators": len(accs),
        "utilization": sum(a.utilization for a in accs) / len(accs) if accs else None,
        "power_watts": sum(powers) if powers else None,
        "cpu_utilization": (sum(n.cpu_utilization for n in fleet) / len(fleet) if fleet else None),
    }


@router.get("/nodes")
def list_nodes(request: Request, caller: Caller, platform: PlatformDep) -> HTMLResponse:
    with platform.db.session(caller.actor.scope) as session:
        found = fleet(session)
    return render(request, "nodes.html", caller, fleet=found, totals=fleet_totals(found))

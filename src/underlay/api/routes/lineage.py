"""Lineage of a project's objects: record edges, query upstream and downstream in one call."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from underlay import identity, lineage
from underlay.api.deps import Ctx
from underlay.identity import Action
from underlay.schemas import LineageEdgeCreate, LineageEdgeRead, LineageGraphRead

router = APIRouter(prefix="/projects/{project}/lineage", tags=["lineage"])


@router.post("", response_model=LineageEdgeRead, status_code=201)
def add_edge(project: str, body: LineageEdgeCreate, ctx: Ctx) -> LineageEdgeRead:
    src = lineage.ObjectRef(body.src.kind, body.src.id)
    dst = lineage.ObjectRef(body.dst.kind, body.dst.id)
    resource = f"project:{project}/lineage:{src}-{body.relation}->{dst}"[:512]
    with ctx.unit("lineage.create", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        lineage.add_edge(u.session, found.id, src, body.relation, dst)
        return LineageEdgeRead.model_validate(body.model_dump())


@router.get("/{kind}/{object_id}", response_model=LineageGraphRead)
def read_lineage(
    project: str,
    kind: str,
    object_id: str,
    ctx: Ctx,
    direction: Literal["upstream", "downstream", "both"] = "both",
    depth: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> LineageGraphRead:
    """Everything upstream (what it came from) and downstream (what came from it)."""
    resource = f"project:{project}/lineage:{kind[:32]}:{object_id[:128]}"
    with ctx.unit("lineage.read", resource, project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        ref = lineage.ObjectRef(kind, object_id)
        graph = lineage.lineage(u.session, ref, direction, depth, project_id=found.id)
        return LineageGraphRead.model_validate(graph.as_dict())

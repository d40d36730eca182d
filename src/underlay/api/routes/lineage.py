"""Lineage of a project's objects: record edges, query upstream and downstream in one call."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from underlay import identity, lineage
from underlay.api.deps import Ctx
from underlay.blobs import is_short_ref
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
        src, dst = (_full(ctx, u.session, found.id, ref) for ref in (src, dst))
        lineage.add_edge(u.session, found.id, src, body.relation, dst)
        edge = {"src": _plain(src), "relation": body.relation, "dst": _plain(dst)}
        return LineageEdgeRead.model_validate(edge)


def _full(ctx: Ctx, session: Session, project_id: int, ref: lineage.ObjectRef) -> lineage.ObjectRef:
    """A ``blob:`` ref by its full digest: ``sha256:`` and unique short prefixes are resolved
    among the project's blobs; other ids and kinds as they are."""
    if ref.kind != "blob" or not is_short_ref(ref.id):
        return ref
    return lineage.ObjectRef("blob", ctx.platform.blobs.resolve(session, project_id, ref.id))


def _plain(ref: lineage.ObjectRef) -> dict[str, str]:
    return {"kind": ref.kind, "id": ref.id}


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
        ref = _full(ctx, u.session, found.id, lineage.ObjectRef(kind, object_id))
        graph = lineage.lineage(u.session, ref, direction, depth, project_id=found.id)
        return LineageGraphRead.model_validate(graph.as_dict())

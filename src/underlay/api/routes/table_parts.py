"""A table write in parts: start, one upload per part, one commit (a single new version), or
drop (see underlay.data.parts). What a Ray Dataset's write tasks use (underlay.client.ray_data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.limits import BINARY_BODY, UploadSlots, run_upload
from underlay.api.routes.tables import Policy, Short, Tables, _check_name, _resource, _Spec, _write
from underlay.data import parts
from underlay.data.privacy import parse_policies
from underlay.data.schemas import PartRead, PartsCommit, PartsStarted, WriteRead
from underlay.identity import Action

router = APIRouter(prefix="/projects/{project}/tables/{name}/parts", tags=["tables"])


def _owner(ctx: Ctx, project: str, name: str, action: str, audited: bool = False) -> parts.Owner:
    with ctx.unit(action, _resource(project, name), project=project, audited=audited) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.write)
        return parts.Owner(found.id, name, ctx.actor.user_id or None)


@router.post("", response_model=PartsStarted, status_code=201)
def start_parts(project: str, name: str, ctx: Ctx) -> PartsStarted:
    """Start a write in parts: upload each part, then commit them as one version."""
    _check_name(name)
    owner = _owner(ctx, project, name, "table.parts.start")
    write = parts.start(ctx.platform.settings.home, owner)
    with ctx.unit("table.parts.start", _resource(project, name), project=project) as u:
        u.detail = {"write": write}
    return PartsStarted(table=name, write=write)


@router.put("/{write}/{index}", response_model=PartRead, openapi_extra=BINARY_BODY)
async def stage_part(
    project: str,
    name: str,
    write: str,
    index: Annotated[int, PathParam(ge=0, lt=parts.MAX_PARTS)],
    request: Request,
    ctx: Ctx,
) -> PartRead:
    """Stage part ``index`` (an Arrow IPC stream); an index staged before is replaced."""

    def work(body: Iterator[bytes]) -> PartRead:
        owner = _owner(ctx, project, name, "table.parts.stage")
        staged = parts.stage(ctx.platform.settings.home, write, owner, index, body)
        return PartRead(index=staged.index, rows=staged.rows, bytes=staged.bytes)

    return await run_upload(request, work)


@router.post("/{write}/commit", response_model=WriteRead)
async def commit_parts(
    project: str,
    name: str,
    write: str,
    body: PartsCommit,
    request: Request,
    ctx: Ctx,
    store: Tables,
    mode: Annotated[Literal["append", "overwrite", "merge"], Query()] = "append",
    key: Annotated[list[Short] | None, Query(max_length=8)] = None,
    evolve: bool = False,
    source: Annotated[str, Query(max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")] = "",
    pii: Annotated[list[Policy] | None, Query(max_length=16)] = None,
    subject_key: Annotated[Short | None, Query()] = None,
) -> WriteRead:
    """Write the parts ``body`` names, in its order, as one new version; the write in parts
    is over whatever happens (its parts are removed)."""
    _check_name(name)
    policies = parse_policies(pii or ())

    def work() -> WriteRead:
        owner = _owner(ctx, project, name, "table.parts.commit")
        with parts.claimed(ctx.platform.settings.home, write, owner) as folder:
            files = tuple(parts.part_files(folder, body.parts))
            spec = _Spec(
                "arrow",
                mode,
                tuple(key or ()),
                evolve,
                source or "ray",
                policies,
                subject_key,
                parts=files,
            )
            return _write(ctx, store, project, name, iter(()), spec)

    slots: UploadSlots = request.app.state.uploads
    async with slots.hold() as threads:
        return await anyio.to_thread.run_sync(work, limiter=threads)


@router.delete("/{write}", status_code=204)
def drop_parts(project: str, name: str, write: str, ctx: Ctx) -> Response:
    """Drop a write in parts and every part staged for it."""
    owner = _owner(ctx, project, name, "table.parts.drop")
    parts.drop(ctx.platform.settings.home, write, owner)
    with ctx.unit("table.parts.drop", _resource(project, name), project=project) as u:
        u.detail = {"write": write[:40]}
    return Response(status_code=204)

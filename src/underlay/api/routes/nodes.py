"""Nodes: the fleet for everyone, and the agent protocol (global admins, i.e. agents)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query, Request, Response

from underlay.api.deps import Ctx
from underlay.compute import logs, nodes
from underlay.compute.inventory import NodeInventory
from underlay.compute.schemas import (
    AgentWork,
    AttemptEnded,
    AttemptStarted,
    CordonRequest,
    NodeRead,
)
from underlay.errors import InvalidInput, PayloadTooLarge
from underlay.identity import Action, authorize

router = APIRouter(prefix="/nodes", tags=["nodes"])
NodeName = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
AttemptId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("", response_model=list[NodeRead])
def list_nodes(ctx: Ctx) -> list[NodeRead]:
    with ctx.unit("node.list", "nodes", audited=False) as u:
        return [
            NodeRead.model_validate(nodes.node_detail(n, a)) for n, a in nodes.list_nodes(u.session)
        ]


@router.put("/{name}", response_model=AgentWork)
def heartbeat(name: NodeName, body: dict[str, object], ctx: Ctx) -> AgentWork:
    """An agent's heartbeat: its inventory in, the work for its node out."""
    with ctx.unit("node.heartbeat", f"node:{name}", audited=False) as u:
        authorize(ctx.actor, Action.admin)
        try:
            inventory = NodeInventory.from_dict(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed inventory: {exc}") from exc
        if inventory.name != name:
            raise InvalidInput(f"inventory is for node {inventory.name!r}, not {name!r}")
        platform = ctx.platform
        node = nodes.heartbeat(u.session, inventory, platform.settings)
        return nodes.work_for(
            u.session,
            node,
            keyring=platform.keyring,
            settings=platform.settings,
            server_url=platform.public_url,
        )


@router.post("/{name}/cordon", response_model=NodeRead)
def cordon(name: NodeName, body: CordonRequest, ctx: Ctx) -> NodeRead:
    with ctx.unit("node.cordon", f"node:{name}") as u:
        authorize(ctx.actor, Action.admin)
        node = nodes.set_cordon(u.session, name, True, body.reason)
        u.detail = {"reason": body.reason}
        return NodeRead.model_validate(node)


@router.post("/{name}/uncordon", response_model=NodeRead)
def uncordon(name: NodeName, ctx: Ctx) -> NodeRead:
    with ctx.unit("node.uncordon", f"node:{name}") as u:
        authorize(ctx.actor, Action.admin)
        return NodeRead.model_validate(nodes.set_cordon(u.session, name, False, ""))


@router.post("/{name}/attempts/{attempt_id}/started", status_code=204)
def attempt_started(
    name: NodeName, attempt_id: AttemptId, body: AttemptStarted, ctx: Ctx
) -> Response:
    with ctx.unit("attempt.started", f"node:{name}/attempt:{attempt_id}", audited=False) as u:
        authorize(ctx.actor, Action.admin)
        node = nodes.read_node(u.session, name)
        nodes.attempt_started(
            u.session, ctx.platform.audit, node, attempt_id, body.pid, body.pid_started
        )
    return Response(status_code=204)


@router.post("/{name}/attempts/{attempt_id}/ended", status_code=204)
def attempt_ended(name: NodeName, attempt_id: AttemptId, body: AttemptEnded, ctx: Ctx) -> Response:
    with ctx.unit("attempt.ended", f"node:{name}/attempt:{attempt_id}", audited=False) as u:
        authorize(ctx.actor, Action.admin)
        node = nodes.read_node(u.session, name)
        nodes.attempt_ended(
            u.session, ctx.platform.audit, node, attempt_id, body, ctx.platform.settings
        )
    ctx.platform.wake_scheduler()
    return Response(status_code=204)


@router.post(
    "/{name}/attempts/{attempt_id}/logs",
    status_code=204,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def append_logs(
    name: NodeName,
    attempt_id: AttemptId,
    request: Request,
    ctx: Ctx,
    offset: Annotated[int | None, Query(ge=0, le=2**50)] = None,
) -> Response:
    data = await request.body()
    if len(data) > logs.MAX_APPEND:
        raise PayloadTooLarge(f"send log chunks of at most {logs.MAX_APPEND} bytes")

    def store() -> None:
        with ctx.unit("attempt.logs", f"node:{name}/attempt:{attempt_id}", audited=False) as u:
            authorize(ctx.actor, Action.admin)
            node = nodes.read_node(u.session, name)
            attempt, _ = nodes.read_attempt(u.session, node, attempt_id)
            logs.append(ctx.platform.settings.home, attempt.job_id, attempt.number, data, offset)

    await anyio.to_thread.run_sync(store)
    return Response(status_code=204)

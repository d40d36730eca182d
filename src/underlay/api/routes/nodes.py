"""Nodes: the fleet for everyone, and the agent protocol (each node's own agent token).

Agent routes open their unit over every project (an agent serves jobs of any project) and
authorize first thing inside it, so a refusal is audited like any other."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.routes.blobs import stream_blob
from underlay.compute import logs, nodes
from underlay.compute.inventory import NodeInventory
from underlay.compute.schemas import (
    AgentWork,
    AttemptEnded,
    AttemptStarted,
    CordonRequest,
    NodeRead,
)
from underlay.errors import InvalidInput, NotFound, PayloadTooLarge
from underlay.identity import Action, authorize, authorize_agent
from underlay.schemas import TokenCreated, TokenRead
from underlay.store import Scope

router = APIRouter(prefix="/nodes", tags=["nodes"])
EVERY = Scope.everything()
NodeName = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
AttemptId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@router.get("", response_model=list[NodeRead])
def list_nodes(ctx: Ctx) -> list[NodeRead]:
    with ctx.unit("node.list", "nodes", audited=False) as u:
        authorize(ctx.actor, Action.read)
        return [
            NodeRead.model_validate(nodes.node_detail(n, a)) for n, a in nodes.list_nodes(u.session)
        ]


@router.put("/{name}", response_model=AgentWork)
def heartbeat(name: NodeName, body: dict[str, object], ctx: Ctx) -> AgentWork:
    """An agent's heartbeat: its inventory in, the work for its node out."""
    with ctx.unit("node.heartbeat", f"node:{name}", audited=False, scope=EVERY) as u:
        authorize_agent(ctx.actor, name)
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


@router.post("/{name}/tokens", response_model=TokenCreated, status_code=201)
def create_agent_token(name: NodeName, ctx: Ctx) -> TokenCreated:
    """A token for node ``name``'s agent (global admins); shown once."""
    with ctx.unit("token.create", f"node:{name}/agent-token") as u:
        authorize(ctx.actor, Action.admin)
        token, secret = identity.create_agent_token(u.session, name)
        u.detail = {"token_id": token.id, "prefix": token.prefix, "kind": "agent"}
        return TokenCreated.model_validate(
            {**TokenRead.model_validate(token).model_dump(), "token": secret}
        )


@router.post("/{name}/uncordon", response_model=NodeRead)
def uncordon(name: NodeName, ctx: Ctx) -> NodeRead:
    with ctx.unit("node.uncordon", f"node:{name}") as u:
        authorize(ctx.actor, Action.admin)
        return NodeRead.model_validate(nodes.set_cordon(u.session, name, False, ""))


@router.post("/{name}/attempts/{attempt_id}/started", status_code=204)
def attempt_started(
    name: NodeName, attempt_id: AttemptId, body: AttemptStarted, ctx: Ctx
) -> Response:
    resource = f"node:{name}/attempt:{attempt_id}"
    with ctx.unit("attempt.started", resource, audited=False, scope=EVERY) as u:
        authorize_agent(ctx.actor, name)
        node = nodes.read_node(u.session, name)
        nodes.attempt_started(
            u.session, ctx.platform.audit, node, attempt_id, body.pid, body.pid_started
        )
    return Response(status_code=204)


@router.post("/{name}/attempts/{attempt_id}/ended", status_code=204)
def attempt_ended(name: NodeName, attempt_id: AttemptId, body: AttemptEnded, ctx: Ctx) -> Response:
    resource = f"node:{name}/attempt:{attempt_id}"
    with ctx.unit("attempt.ended", resource, audited=False, scope=EVERY) as u:
        authorize_agent(ctx.actor, name)
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
        resource = f"node:{name}/attempt:{attempt_id}"
        with ctx.unit("attempt.logs", resource, audited=False, scope=EVERY) as u:
            authorize_agent(ctx.actor, name)
            node = nodes.read_node(u.session, name)
            attempt, _ = nodes.read_attempt(u.session, node, attempt_id)
            logs.append(ctx.platform.settings.home, attempt.job_id, attempt.number, data, offset)

    await anyio.to_thread.run_sync(store)
    return Response(status_code=204)


@router.get(
    "/{name}/attempts/{attempt_id}/workdir",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def attempt_workdir(name: NodeName, attempt_id: AttemptId, ctx: Ctx) -> StreamingResponse:
    """The working-folder snapshot of an attempt placed on this node (its agent only): the
    agent reads no blob of any project otherwise."""
    resource = f"node:{name}/attempt:{attempt_id}/workdir"
    with ctx.unit("attempt.workdir", resource, scope=EVERY) as u:
        authorize_agent(ctx.actor, name)
        node = nodes.read_node(u.session, name)
        _, job = nodes.read_attempt(u.session, node, attempt_id)
        if not job.workdir_digest:
            raise NotFound(f"job {job.id} has no working-folder snapshot")
        return stream_blob(
            ctx.platform.blobs,
            u.session,
            job.project_id,
            job.workdir_digest,
            media_type="application/octet-stream",
        )

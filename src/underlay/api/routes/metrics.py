"""Prometheus metrics: ``GET /metrics`` (and ``/api/v1/metrics``) with a bearer token; what a
caller sees is scoped to their projects (:mod:`underlay.monitoring.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from underlay import identity
from underlay.api.deps import Ctx
from underlay.monitoring import metrics

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def read_metrics(request: Request, ctx: Ctx) -> Response:
    """The platform's metrics in the Prometheus text format: every series for a global
    admin, the series of their own projects for anyone else (none: a page with no samples)."""
    identity.authorize(ctx.actor, identity.Action.read)  # agent tokens are refused
    state = request.app.state
    compute = getattr(state, "compute", None)
    sources = metrics.Sources(
        api=state.api_latency,
        rounds=compute.loop.rounds if compute is not None else None,
        serving=state.dataplane.guards.prometheus,
    )
    scope = metrics.scope_ids(ctx.actor.is_admin, ctx.actor.roles)
    with ctx.unit("metrics.read", "metrics", audited=False) as u:
        text = metrics.render(u.session, scope, sources)
    return Response(text, media_type=CONTENT_TYPE_LATEST)

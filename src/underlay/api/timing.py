"""Pure ASGI middleware timing every HTTP request into the API latency histogram.

The route label is the matched route's template (``/api/v1/projects/{project}/jobs``), never
the raw path, so the number of series stays bounded whatever clients send; a request that
matched no route is labelled ``unmatched``. The cost per request is two clock reads and one
histogram observation (``benchmarks/metrics_middleware.py`` measures it).
"""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"


class RequestTimingMiddleware:
    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes is answered 500 by the outer middleware

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.histogram.labels(scope["method"], route_template(scope), str(status)).observe(
                time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The matched route's full template. FastAPI 0.16x includes routers lazily and keeps the
    full template in its effective route context (``scope["route"]`` is then the route as
    declared in its router, without the prefix); earlier versions copied routes with their
    full path into ``scope["route"]``."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    path = getattr(context, "path", None)
    if not path:
        path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED

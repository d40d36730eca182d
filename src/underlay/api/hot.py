"""The prediction routes' fast lane: ``POST …/deployments/{name}/predict`` and
``POST …/deployments/{name}/v2/models/{model}/infer`` answered without FastAPI's router.

FastAPI finds a route by trying the app's routes in turn (its included routers lazily, each
probe a regular expression and a scope copy); with a few hundred routes that search was the
largest single cost of a prediction in the API server (about a third of the event loop's
time, py-spy, ``docs/serving-performance.md``), more than the data plane's own work. This
middleware sits inside the request-context and timing middleware (so request ids, header and
body limits, the access log and the latency histogram apply unchanged) and in front of the
router: a ``POST`` whose path has exactly the shape of one of the two routes is handed to the
same function the FastAPI route calls (:func:`~underlay.api.routes.deployments.predict_response`,
:func:`~underlay.api.routes.inference_v2.infer_response`), and errors become the same problem
responses. Anything else, a name over 63 characters (FastAPI's 422) or an app mounted under
a root path included, goes to the router as before. The routes stay registered, so the
OpenAPI document is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from underlay.api.problems import http_error_response
from underlay.api.routes.deployments import predict_response
from underlay.api.routes.inference_v2 import infer_response

_SEGMENT = r"([^/]+)"
_NAME = r"([^/]{1,63})"  # the routes' ``Path(max_length=63)``: longer is FastAPI's 422


@dataclass(frozen=True)
class _Template:
    """What :func:`underlay.api.timing.route_template` reads for the latency label."""

    path: str


Handler = Callable[..., Awaitable[Response]]


class HotRoutes:
    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        self.app = app
        base = f"{prefix}/projects/{{project}}/deployments/{{name}}"
        lanes: list[tuple[str, re.Pattern[str], Handler, _Template]] = [
            (
                "/predict",
                re.compile(re.escape(prefix) + f"/projects/{_SEGMENT}/deployments/{_NAME}/predict"),
                predict_response,
                _Template(f"{base}/predict"),
            ),
            (
                "/infer",
                re.compile(
                    re.escape(prefix)
                    + f"/projects/{_SEGMENT}/deployments/{_NAME}/v2/models/{_NAME}/infer"
                ),
                infer_response,
                _Template(f"{base}/v2/models/{{model}}/infer"),
            ),
        ]
        self._lanes = lanes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path: str = scope["path"]
            for suffix, pattern, handler, template in self._lanes:
                if path.endswith(suffix):
                    found = pattern.fullmatch(path)
                    if found is not None:
                        await self._serve(scope, receive, send, handler, template, found.groups())
                        return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(
        scope: Scope,
        receive: Receive,
        send: Send,
        handler: Handler,
        template: _Template,
        params: tuple[str, ...],
    ) -> None:
        scope["route"] = template
        request = Request(scope, receive)
        try:
            response = await handler(request, *params)
        except HTTPException as exc:  # the body limit or deadline, raised while reading it
            response = http_error_response(request, exc)
        await response(scope, receive, send)

"""The Open Inference Protocol (KServe V2) routes of a deployment, over the data plane.

Base ``/api/v1/projects/{project}/deployments/{name}/v2``; a deployment serves one model,
named like the deployment. ``tritonclient.http.InferenceServerClient`` takes that base as
its ``url`` (``"127.0.0.1:PORT/api/v1/projects/P/deployments/D"``: it accepts a base path
after host and port and puts ``v2/…`` after it) and the token as
``headers={"Authorization": "Bearer …"}``; the binary tensor extension is supported both
ways. Version-pinned paths (``…/versions/{v}/…``) are not served: the data plane chooses
the version (stable or canary).

Every route authenticates and resolves the deployment first, so another project's token
gets 404 even on the health routes. Errors carry the V2 ``error`` field (what V2 clients
read) next to the usual problem fields. The infer route is the hot path: the data plane's
cached authentication and deployment view, the signature compiled once per version, one
decode, one batch submit, one encode.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from underlay.api.problems import error_response
from underlay.errors import NotFound, Unavailable, UnderlayError
from underlay.serving import v2, v2_response
from underlay.serving.dataplane import DataPlane, DeploymentView, Principal, dataplane_of

router = APIRouter(prefix="/projects/{project}/deployments/{name}/v2", tags=["inference"])

DeploymentName = Annotated[str, Path(max_length=63)]
ModelName = Annotated[str, Path(max_length=63)]
_OPEN = v2.compile_signature(None)  # a model saved without a signature


def _error(request: Request, exc: UnderlayError) -> Response:
    """The problem response with the V2 ``error`` field added."""
    problem = error_response(request, exc)
    body = json.loads(bytes(problem.body))
    body["error"] = exc.message
    headers = {
        k: v for k, v in problem.headers.items() if k.lower() in ("retry-after", "www-authenticate")
    }
    return JSONResponse(
        body,
        status_code=problem.status_code,
        headers=headers,
        media_type="application/problem+json",
    )


async def _view(
    request: Request, project: str, name: str, model: str | None = None
) -> tuple[DataPlane, Principal, DeploymentView]:
    plane = dataplane_of(request)
    principal = await plane.authenticate(request)
    view = await plane.describe(project, name, principal)
    if model is not None and model != view.name:
        raise NotFound(f"deployment {name!r} serves model {view.name!r}, not {model[:80]!r}")
    return plane, principal, view


def _compiled(view: DeploymentView) -> v2.CompiledSignature:
    """The signature the data plane compiled for the view (with its ranges policy)."""
    return view.compiled if view.compiled is not None else _OPEN


@router.get("")
async def server_metadata(project: str, name: DeploymentName, request: Request) -> Response:
    """The server's name, version and protocol extensions."""
    try:
        await _view(request, project, name)
    except UnderlayError as exc:
        return _error(request, exc)
    return JSONResponse(v2_response.server_metadata())


@router.get("/health/live")
async def live(project: str, name: DeploymentName, request: Request) -> Response:
    """200 while the server answers."""
    try:
        await _view(request, project, name)
    except UnderlayError as exc:
        return _error(request, exc)
    return JSONResponse({"live": True})


async def _ready(request: Request, project: str, name: str, model: str | None) -> Response:
    try:
        _, _, view = await _view(request, project, name, model)
        if not view.ready:
            raise Unavailable(f"deployment {name!r} has no ready replica yet", retry_after=1)
    except UnderlayError as exc:
        return _error(request, exc)
    return JSONResponse({"ready": True})


@router.get("/health/ready")
async def ready(project: str, name: DeploymentName, request: Request) -> Response:
    """200 when the deployment has a ready replica, else 503."""
    return await _ready(request, project, name, None)


@router.get("/models/{model}")
async def model_metadata(
    project: str, name: DeploymentName, model: ModelName, request: Request
) -> Response:
    """The model's version and its input and output tensors."""
    try:
        _, _, view = await _view(request, project, name, model)
    except UnderlayError as exc:
        return _error(request, exc)
    signature = _compiled(view).signature
    return JSONResponse(v2_response.model_metadata(view.name, view.version, signature, view.model))


@router.get("/models/{model}/ready")
async def model_ready(
    project: str, name: DeploymentName, model: ModelName, request: Request
) -> Response:
    """200 when the model has a ready replica, else 503."""
    return await _ready(request, project, name, model)


@router.post(
    "/models/{model}/infer",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "example": {
                        "inputs": [
                            {"name": "input", "datatype": "FP64", "shape": [1, 2], "data": [0, 1]}
                        ]
                    }
                }
            }
        }
    },
)
async def infer(project: str, name: DeploymentName, model: ModelName, request: Request) -> Response:
    """Typed tensors in, typed tensors out; the binary tensor extension when asked."""
    return await infer_response(request, project, name, model)


async def infer_response(request: Request, project: str, name: str, model: str) -> Response:
    """The infer route's answer (also served by :mod:`underlay.api.hot`)."""
    try:
        plane, principal, view = await _view(request, project, name, model)
        request_body = v2.decompress_body(
            await request.body(),
            request.headers.get("content-encoding"),
            request.app.state.platform.settings.server.max_json_body,
        )
        decoded = v2.decode_infer_request(
            request_body, request.headers.get(v2.HEADER_LENGTH), _compiled(view)
        )
        request_id: Any = decoded.id or getattr(request.state, "request_id", None)
        result = await plane.predict(
            project, name, decoded.inputs, principal, request_id=request_id, validated=True
        )
        body, headers = v2_response.encode_infer_response(
            view.name, result.version, result.outputs, decoded
        )
    except UnderlayError as exc:
        return _error(request, exc)
    return Response(body, headers=headers)

"""RFC 9457 problem responses for every error the API returns.

The error tree in :mod:`underlay.errors` decides status and type; validation errors list
what was wrong without echoing the submitted values (they may hold passwords); anything
unexpected is answered by :mod:`underlay.api.middleware` as a generic 500 problem carrying
the request id, and logged with its traceback on the server only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from underlay.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    UnderlayError,
    problem_type,
)
from underlay.schemas import Problem

log = logging.getLogger("underlay.api")

_HTTP_SLUGS: dict[int, type[UnderlayError]] = {404: NotFound, 413: PayloadTooLarge}


def problem_body(
    status: int, error: type[UnderlayError], detail: str, instance: str, request_id: str | None
) -> dict[str, Any]:
    """The RFC 9457 fields every problem response carries."""
    return {
        "type": problem_type(error),
        "title": error.title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
    }


def problem_response(
    request: Request,
    error: type[UnderlayError],
    detail: str,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    body = problem_body(status or error.status, error, detail, request.url.path, request_id)
    return JSONResponse(
        {**body, **extra},
        status_code=body["status"],
        headers=headers,
        media_type="application/problem+json",
    )


def error_response(request: Request, exc: UnderlayError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    if isinstance(exc, Unavailable) and "retry_after" in exc.extra:
        headers = {"Retry-After": str(exc.extra["retry_after"])}
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="underlay"'}
    extra = {k: v for k, v in exc.extra.items() if k != "denied"}
    return problem_response(request, type(exc), exc.message, headers=headers, **extra)


def http_error_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """The problem response for an HTTP-level refusal (a body over the limit, a stalled body,
    no such route, a method not allowed)."""
    cls = _HTTP_SLUGS.get(exc.status_code, InvalidInput)
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}"
    headers = dict(exc.headers or {}) or None
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; name them all
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return problem_response(request, cls, detail, status=exc.status_code, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path (probed through the
    routes' own matching, so included routers and path parameters count)."""
    routes = request.app.router.routes
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_STATUSES = {
    400: "Invalid input",
    401: "Not authenticated: no, or an invalid, expired or revoked token",
    403: "Permission denied: the caller's role does not allow the action",
    404: "Not found, or not visible to the caller",
    409: "Conflict: exists already or changed meanwhile",
    413: "Request body too large",
    422: "Request failed validation; ``errors`` lists each problem",
    429: "Too many requests; wait ``Retry-After`` seconds",
    431: "Request head too large: too many header fields, or a head (URL included) over the limit",
    503: "Unavailable; try later",
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
    }
    for status, description in _PROBLEM_STATUSES.items()
}
"""The problem responses every authenticated route documents (the routers' defaults)."""


def _openapi_with_problems(app: FastAPI) -> Callable[[], dict[str, Any]]:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = Problem.model_json_schema()
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def install(app: FastAPI) -> None:
    app.openapi = _openapi_with_problems(app)  # type: ignore[method-assign]

    @app.exception_handler(UnderlayError)
    async def _underlay(request: Request, exc: UnderlayError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return problem_response(request, InvalidInput, detail, status=422, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error_response(request, exc)

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # a value the database cannot hold (out of range, NUL in text) that validation missed
        log.warning("database refused a value", extra={"error": type(exc.orig).__name__})
        detail = "a value in the request is out of range or malformed for storage"
        return problem_response(request, InvalidInput, detail)

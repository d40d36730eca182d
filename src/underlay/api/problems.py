"""RFC 9457 problem responses for every error the API returns.

The error tree in :mod:`underlay.errors` decides status and type; validation errors list
what was wrong without echoing the submitted values (they may hold passwords); anything
unexpected becomes a generic 500 problem carrying the request id, and is logged with its
traceback on the server only.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from underlay.errors import (
    InvalidInput,
    NotFound,
    RateLimited,
    UnderlayError,
    problem_type,
)

log = logging.getLogger("underlay.api")

_HTTP_SLUGS = {404: NotFound, 413: InvalidInput}


def problem_response(
    request: Request,
    status: int,
    type_: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
        **extra,
    }
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


def error_response(request: Request, exc: UnderlayError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="underlay"'}
    extra = {k: v for k, v in exc.extra.items() if k != "denied"}
    return problem_response(
        request, exc.status, problem_type(type(exc)), exc.title, exc.message, headers, **extra
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(UnderlayError)
    async def _underlay(request: Request, exc: UnderlayError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem_response(
            request,
            422,
            problem_type(InvalidInput),
            "Invalid input",
            f"{where}: {first['msg']}" if where else str(first["msg"]),
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = _HTTP_SLUGS.get(exc.status_code, InvalidInput)
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
        return problem_response(
            request,
            exc.status_code,
            problem_type(cls),
            cls.title,
            detail,
            dict(exc.headers or {}) or None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"request_id": request.state.request_id})
        return problem_response(
            request,
            500,
            problem_type(UnderlayError),
            "Platform error",
            "an unexpected error occurred; quote the request id to an operator",
        )

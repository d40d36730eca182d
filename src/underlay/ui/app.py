"""Mounting the dashboard on the API's app: static files, the page routers, error pages.

Pages live at the root (``/``, ``/login``, ``/jobs`` …), beside ``/api/v1``, ``/healthz``,
``/readyz`` and ``/metrics``, which stay as they are. An error raised while serving a page
(a request that went through :func:`~underlay.ui.auth.optional_caller`) is answered with an
HTML page of the same status; every other request keeps the API's problem responses.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from underlay.errors import UnderlayError
from underlay.platform import Platform
from underlay.ui.auth import LoginRequired, login_redirect
from underlay.ui.history import FleetHistory
from underlay.ui.pages import ROUTERS
from underlay.ui.render import render

STATIC = Path(__file__).parent / "static"
Handler = Callable[[Request, Exception], Awaitable[Response]]

_TITLES = {
    400: "Bad request",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Conflict",
    413: "Too large",
    422: "Bad request",
    429: "Too many requests",
    503: "Unavailable",
}


def _is_page(request: Request) -> bool:
    return bool(getattr(request.state, "ui", False))


def error_page(request: Request, status: int, detail: str) -> Response:
    caller = getattr(request.state, "ui_caller", None)
    title = _TITLES.get(status, "Error")
    return render(request, "error.html", caller, status_code=status, title=title, detail=detail)


def _detail(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, UnderlayError):
        return exc.status, exc.message
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return 400, f"{where}: {first.get('msg', 'invalid value')}" if where else "bad request"
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail)
    return 500, "internal error"


def _wrap(api_handler: Handler | None) -> Handler:
    async def handle(request: Request, exc: Exception) -> Response:
        if _is_page(request) or api_handler is None:
            status, detail = _detail(exc)
            return error_page(request, status, detail)
        return await api_handler(request, exc)

    return handle


def _with_history(app: FastAPI, platform: Platform) -> None:
    """Run the fleet sampler for the overview's charts while the app's lifespan runs."""
    history = FleetHistory(platform.db, platform.settings.ui.sample_interval_s)
    app.state.fleet_history = history
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            history.start()
            try:
                yield state
            finally:
                history.stop()

    app.router.lifespan_context = lifespan


def install(app: FastAPI) -> None:
    """Mount the dashboard on ``app`` (after the API's routers and problem handlers)."""
    _with_history(app, app.state.platform)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    for router in ROUTERS:
        app.include_router(router, include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_redirect(exc.next_path), status_code=303)

    for kind in (UnderlayError, RequestValidationError, StarletteHTTPException):
        handler = app.exception_handlers.get(kind)
        app.add_exception_handler(kind, _wrap(handler))  # type: ignore[arg-type]

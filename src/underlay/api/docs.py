"""The API docs page (Swagger UI) served from the server itself, for air-gapped installs.

FastAPI's default page loads Swagger UI's script and style from a CDN, which a closed network
cannot reach. The assets come from the ``swagger-ui-bundle`` package (Apache-2.0) and are
mounted under ``/api/v1/docs/assets``; the page references nothing outside the server.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI, prefix: str) -> None:
    """Serve ``{prefix}/docs`` and its assets locally; ``app`` must have ``docs_url=None``."""
    import swagger_ui_bundle

    assets = f"{prefix}/docs/assets"
    app.mount(assets, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    app.state.docs_prefix = prefix
    app.add_api_route(f"{prefix}/docs", docs, methods=["GET"], include_in_schema=False)


def docs(request: Request) -> HTMLResponse:
    """The docs page. A module-level endpoint, not a closure over the app: FastAPI caches
    facts about endpoint callables process-wide, and a closure would keep every app built in
    a process (the test suite builds hundreds) alive through that cache."""
    prefix: str = request.app.state.docs_prefix
    assets = f"{prefix}/docs/assets"
    return get_swagger_ui_html(
        openapi_url=f"{prefix}/openapi.json",
        title=f"{request.app.title} API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )

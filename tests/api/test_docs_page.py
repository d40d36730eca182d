"""The API docs page works on a closed network: every asset it names is served by us."""

from __future__ import annotations

import re

import httpx

from tests.conftest import LiveServer

API = "/api/v1"


def _references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", html)


def test_docs_page_names_no_external_url_and_its_assets_load_from_the_server(
    server: LiveServer,
):
    page = httpx.get(f"{server.url}{API}/docs", timeout=15)
    assert page.status_code == 200
    assert "swagger-ui-bundle.js" in page.text
    assert not re.search(r"https?://|//cdn", page.text)
    refs = _references(page.text)
    assert {f"{API}/docs/assets/swagger-ui-bundle.js", f"{API}/openapi.json"} <= set(refs)
    for ref in refs:
        assert ref.startswith("/"), ref
        got = httpx.get(f"{server.url}{ref}", timeout=15)
        assert got.status_code == 200, ref
        assert got.content, ref


def test_health_probes_are_documented_in_the_openapi_schema(server: LiveServer):
    schema = httpx.get(f"{server.url}{API}/openapi.json", timeout=15).json()
    live = schema["paths"][f"{API}/healthz"]["get"]
    ready = schema["paths"][f"{API}/readyz"]["get"]
    assert live["summary"] == "Liveness probe" and "Needs no token" in live["description"]
    assert ready["summary"] == "Readiness probe" and "503" in ready["responses"]
    assert "/readyz" in ready["description"]
    assert httpx.get(f"{server.url}/healthz", timeout=15).json()["status"] == "ok"
    assert httpx.get(f"{server.url}/readyz", timeout=15).json()["status"] == "ready"

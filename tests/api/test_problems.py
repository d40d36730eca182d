"""Bad input over real HTTP: every refusal is a 4xx RFC 9457 problem, never a 500.

Each test sends what a careless or hostile client would send (malformed JSON, wrong types,
unknown or missing fields, oversized bodies with and without Content-Length, traversal in
names and digests, unknown routes and methods) and checks the one response shape the API
promises: ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` and a
``request_id`` equal to the ``X-Request-ID`` header, and no submitted password echoed back.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from underlay.config import Settings

API = "/api/v1"
PASSWORD = "Never-Echo-This-Secret-42"
UPLOAD_LIMIT = 256 * 1024
JSON_LIMIT = 64 * 1024


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small body limits, so an oversized body needs only a few hundred KiB."""
    settings.blobs.max_size = UPLOAD_LIMIT
    settings.server.max_json_body = JSON_LIMIT
    return settings


@pytest.fixture
def api(server) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def project(admin) -> str:  # type: ignore[no-untyped-def]
    admin.create_project("vision")
    return "vision"


def assert_problem(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """The response is a well-formed 4xx problem; returns its body."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    for key in ("type", "title", "detail"):
        assert isinstance(body.get(key), str) and body[key], (key, body)
    assert body["type"].startswith("urn:underlay:problem:")
    assert body["status"] == response.status_code
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["instance"].startswith("/")  # the path refused, for the logs
    assert "Traceback" not in response.text
    return body


# -- JSON bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": ',
        b"{'name': 'single-quotes'}",
        b'{"name": "vision",}',
        b"\xff\xfe not utf-8",
        b"[1, 2",
    ],
    ids=["truncated", "single-quotes", "trailing-comma", "not-utf8", "open-array"],
)
def test_malformed_json_is_a_problem(api: httpx.Client, raw: bytes) -> None:
    r = api.post(f"{API}/projects", content=raw, headers={"Content-Type": "application/json"})
    body = assert_problem(r)
    assert r.status_code in (400, 422)
    assert body["type"] == "urn:underlay:problem:invalid-input"


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/projects", {"name": 123}, "name"),
        ("/projects", {"name": ["vision"]}, "name"),
        ("/projects", {"name": "vision", "description": {"a": 1}}, "description"),
        ("/projects", [{"name": "vision"}], "body"),
        ("/projects", "vision", "body"),
        ("/users", {"name": "ann", "is_admin": [True]}, "is_admin"),
        ("/tokens", {"name": "t", "expires_in_days": "soon"}, "expires_in_days"),
        ("/tokens", {"name": "t", "expires_in_days": 1e9}, "expires_in_days"),
        ("/projects/vision/members", {"user": "ann", "role": "owner"}, "role"),
    ],
)
def test_wrong_types_are_a_problem(
    api: httpx.Client, project: str, path: str, payload: Any, field: str
) -> None:
    r = api.post(f"{API}{path}", json=payload)
    body = assert_problem(r, 422)
    assert any(field in e["loc"] for e in body["errors"]), body["errors"]
    # each error names pydantic's error type (a client tells "missing" from "int_parsing")
    assert all(e["type"] and e["type"] == e["type"].lower() for e in body["errors"])


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/projects", {"name": "vision", "colour": "red"}, "colour"),
        ("/users", {"name": "ann", "role": "admin"}, "role"),
        ("/tokens", {"name": "t", "scopes": ["all"]}, "scopes"),
        ("/auth/login", {"user": "admin", "password": PASSWORD, "otp": "1"}, "otp"),
        (
            "/projects/vision/lineage",
            {
                "src": {"kind": "blob", "id": "a"},
                "relation": "input_of",
                "dst": {"kind": "run", "id": "b"},
                "weight": 3,
            },
            "weight",
        ),
    ],
)
def test_unknown_fields_are_refused(
    api: httpx.Client, project: str, path: str, payload: Any, field: str
) -> None:
    r = api.post(f"{API}{path}", json=payload)
    body = assert_problem(r, 422)
    assert any(field in e["loc"] for e in body["errors"]), body["errors"]
    assert PASSWORD not in r.text


def test_unknown_fields_inside_a_lineage_ref_are_refused(api: httpx.Client, project: str) -> None:
    payload = {
        "src": {"kind": "blob", "id": "a", "owner": "mallory"},
        "relation": "input_of",
        "dst": {"kind": "run", "id": "b"},
    }
    r = api.post(f"{API}/projects/{project}/lineage", json=payload)
    body = assert_problem(r, 422)
    assert any("owner" in e["loc"] for e in body["errors"]), body["errors"]


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/projects", {}, "name"),
        ("/projects", {"description": "no name"}, "name"),
        ("/users", {"email": "a@example.org"}, "name"),
        ("/auth/login", {"user": "admin"}, "password"),
        ("/projects/vision/members", {"role": "viewer"}, "user"),
        ("/projects/vision/lineage", {"src": {"kind": "blob", "id": "a"}}, "relation"),
    ],
)
def test_missing_fields_are_named(
    api: httpx.Client, project: str, path: str, payload: Any, field: str
) -> None:
    r = api.post(f"{API}{path}", json=payload)
    body = assert_problem(r, 422)
    assert field in body["detail"] or any(field in e["loc"] for e in body["errors"])


def test_missing_body_is_a_problem(api: httpx.Client) -> None:
    assert_problem(api.post(f"{API}/projects"), 422)


def test_json_body_with_wrong_content_type_is_a_problem(api: httpx.Client) -> None:
    r = api.post(f"{API}/projects", content=b"name=vision", headers={"Content-Type": "text/plain"})
    assert_problem(r)


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/users", {"name": "Not A Name!", "password": PASSWORD}),
        ("/users", {"name": "ann", "password": PASSWORD, "is_admin": "perhaps"}),
        ("/users", {"name": "ann", "password": PASSWORD * 50}),
        ("/users", {"name": "ann", "password": [PASSWORD]}),
        ("/users/admin", {"password": PASSWORD, "is_active": "maybe"}),
        ("/auth/login", {"user": "", "password": PASSWORD}),
        ("/auth/login", {"user": "admin", "password": PASSWORD}),
        ("/auth/login", {"user": "nobody", "password": PASSWORD}),
    ],
)
def test_password_is_never_echoed(api: httpx.Client, path: str, payload: Any) -> None:
    method = "PATCH" if path == "/users/admin" else "POST"
    r = api.request(method, f"{API}{path}", json=payload)
    assert_problem(r)
    assert PASSWORD not in r.text
    assert PASSWORD[:12] not in r.text


def test_password_in_malformed_json_is_never_echoed(api: httpx.Client) -> None:
    raw = b'{"name": "ann", "password": "' + PASSWORD.encode() + b'"'
    r = api.post(f"{API}/users", content=raw, headers={"Content-Type": "application/json"})
    assert_problem(r, 422)
    assert PASSWORD not in r.text


# -- oversized bodies --------------------------------------------------------------------------


def _oversized_json(limit: int) -> bytes:
    return json.dumps({"name": "vision", "description": "x" * (limit + 1)}).encode()


def test_oversized_json_with_content_length_is_413(server, api: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    raw = _oversized_json(server.settings.server.max_json_body)
    r = api.post(f"{API}/projects", content=raw, headers={"Content-Type": "application/json"})
    body = assert_problem(r, 413)
    assert body["type"] == "urn:underlay:problem:payload-too-large"
    assert str(server.settings.server.max_json_body) in body["detail"]
    assert api.get(f"{API}/projects").json() == []


def test_oversized_json_chunked_without_length_is_413(server, api: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    raw = _oversized_json(server.settings.server.max_json_body)

    def chunks() -> Iterator[bytes]:  # a generator: httpx sends it chunked, no Content-Length
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    request = api.build_request(
        "POST", f"{API}/projects", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    r = api.send(request)
    body = assert_problem(r, 413)
    assert body["type"] == "urn:underlay:problem:payload-too-large"
    assert api.get(f"{API}/projects").json() == []


def test_oversized_upload_with_content_length_is_413(api: httpx.Client, project: str) -> None:
    r = api.put(f"{API}/projects/{project}/blobs", content=b"\0" * (UPLOAD_LIMIT + 1))
    body = assert_problem(r, 413)
    assert body["type"] == "urn:underlay:problem:payload-too-large"
    assert api.get(f"{API}/projects/{project}/blobs").json() == []


def test_oversized_upload_chunked_is_413_and_leaves_no_blob(
    server,  # type: ignore[no-untyped-def]
    api: httpx.Client,
    project: str,
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(UPLOAD_LIMIT // (32 * 1024) + 2):
            yield b"\1" * (32 * 1024)

    r = api.put(f"{API}/projects/{project}/blobs", content=chunks())
    body = assert_problem(r, 413)
    assert body["type"] == "urn:underlay:problem:payload-too-large"
    assert api.get(f"{API}/projects/{project}/blobs").json() == []
    blob_root = server.settings.home / "blobs"
    names = {p.name for p in blob_root.rglob("*") if p.is_file()} if blob_root.exists() else set()
    assert not any(len(n) == 64 and all(c in "0123456789abcdef" for c in n) for n in names)


def test_upload_with_a_wrong_declared_digest_stores_nothing(
    api: httpx.Client, project: str
) -> None:
    data = b"the real content"
    claimed = hashlib.sha256(b"something else").hexdigest()
    r = api.put(f"{API}/projects/{project}/blobs", params={"digest": claimed}, content=data)
    body = assert_problem(r)
    assert claimed in body["detail"] or hashlib.sha256(data).hexdigest() in body["detail"]
    assert api.get(f"{API}/projects/{project}/blobs").json() == []


@pytest.mark.parametrize(
    "params",
    [
        {"media_type": "not a media type"},
        {"media_type": "text/plain\r\nX-Injected: 1"},
        {"digest": "ABC"},
        {"digest": "g" * 64},
        {"name": "n" * 256},
    ],
)
def test_upload_with_bad_parameters_is_a_problem(
    api: httpx.Client, project: str, params: dict[str, str]
) -> None:
    r = api.put(f"{API}/projects/{project}/blobs", params=params, content=b"data")
    assert_problem(r, 422)
    assert api.get(f"{API}/projects/{project}/blobs").json() == []


# -- names, digests and ids in paths ---------------------------------------------------------


def _raw(client: httpx.Client, method: str, raw_path: str | bytes) -> httpx.Response:
    """Send a path exactly as given (httpx would remove dot segments) over plain HTTP/1.1."""
    path = raw_path.decode() if isinstance(raw_path, bytes) else raw_path
    url = client.base_url
    conn = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": client.headers["authorization"]})
        reply = conn.getresponse()
        return httpx.Response(reply.status, headers=reply.getheaders(), content=reply.read())
    finally:
        conn.close()


def _raw_get(client: httpx.Client, raw_path: str | bytes) -> httpx.Response:
    return _raw(client, "GET", raw_path)


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/v1/projects/../../etc/passwd",
        b"/api/v1/projects/..%2f..%2fetc%2fpasswd",
        b"/api/v1/projects/%2e%2e%2f%2e%2e%2fmaster.key",
        b"/api/v1/projects/%2e%2e",
        b"/api/v1/projects/..",
        b"/api/v1/projects/a%2fb",
        b"/api/v1/projects/vision%2f..%2f..%2fusers",
        b"/api/v1/projects/..%5c..%5cwindows",
        b"/api/v1/projects/vision/blobs/..%2f..%2f..%2fmaster.key",
        b"/api/v1/projects/vision/blobs/../../master.key/content",
        b"/api/v1/users/..%2fadmin",
    ],
)
def test_traversal_in_paths_is_a_problem(
    server,  # type: ignore[no-untyped-def]
    api: httpx.Client,
    project: str,
    raw_path: bytes,
) -> None:
    r = _raw_get(api, raw_path)
    assert_problem(r)
    master = server.settings.master_key_path.read_bytes()
    assert master not in r.content


@pytest.mark.parametrize(
    "name",
    ["../etc", "..", "a/b", "a\\b", "a\x00b", "Vision", "-x", "x" * 64, "名前", "a b", ""],
    ids=[
        "dotdot-slash",
        "dotdot",
        "slash",
        "backslash",
        "nul",
        "upper",
        "leading-dash",
        "too-long",
        "unicode",
        "space",
        "empty",
    ],
)
def test_bad_project_names_are_refused_on_create(api: httpx.Client, name: str) -> None:
    r = api.post(f"{API}/projects", json={"name": name})
    body = assert_problem(r, 422)
    assert body["errors"][0]["loc"] == ["body", "name"]
    assert api.get(f"{API}/projects").json() == []


@pytest.mark.parametrize(
    "name",
    ["a\x00b", "..", "...", "x" * 300, "%00", "vision\x00"],
    ids=["nul", "dotdot", "dots", "very-long", "percent-nul", "trailing-nul"],
)
def test_bad_names_in_read_paths_are_a_problem(api: httpx.Client, project: str, name: str) -> None:
    quoted = urllib.parse.quote(name, safe="").encode()
    for template in (
        b"/api/v1/projects/%s",
        b"/api/v1/projects/%s/blobs",
        b"/api/v1/projects/%s/members",
        b"/api/v1/users/%s",
    ):
        r = _raw_get(api, template % quoted)
        assert_problem(r)


@pytest.mark.parametrize(
    "digest",
    [
        "abc",
        "A" * 64,
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "..",
        "...",
        "..%2F..%2Fmaster.key",
        "%00" + "0" * 61,
        "0" * 62 + "%00",
        "master.key",
        "..%5Cmaster.key",
    ],
)
@pytest.mark.parametrize("suffix", ["", "/content"], ids=["meta", "content"])
def test_bad_digests_are_a_problem(
    server,  # type: ignore[no-untyped-def]
    api: httpx.Client,
    project: str,
    digest: str,
    suffix: str,
) -> None:
    api.put(f"{API}/projects/{project}/blobs", content=b"one real blob")
    r = _raw_get(api, f"/api/v1/projects/{project}/blobs/{digest}{suffix}".encode())
    assert_problem(r)
    assert server.settings.master_key_path.read_bytes() not in r.content


@pytest.mark.parametrize(
    "digest", ["abc", "..", "A" * 64, "..%2F..%2Fmaster.key", "%00" + "0" * 63]
)
def test_delete_with_a_bad_digest_is_a_problem_and_deletes_nothing(
    server,  # type: ignore[no-untyped-def]
    api: httpx.Client,
    project: str,
    digest: str,
) -> None:
    created = api.put(f"{API}/projects/{project}/blobs", content=b"keep me").json()
    assert_problem(_raw(api, "DELETE", f"/api/v1/projects/{project}/blobs/{digest}"))
    assert server.settings.master_key_path.exists()
    listed = api.get(f"{API}/projects/{project}/blobs").json()
    assert [b["digest"] for b in listed] == [created["digest"]]
    assert api.get(f"{API}/projects/{project}/blobs/{created['digest']}/content").content == (
        b"keep me"
    )


@pytest.mark.parametrize(
    ("kind", "object_id"),
    [
        ("blob", "..%2F..%2Fetc"),
        ("blob", "%00"),
        ("blob", "a%00b"),
        ("Blob", "x"),
        ("bl%00b", "x"),
        ("blob", "-starts-with-dash"),
        ("blob", "x" * 129),
        ("k" * 33, "x"),
        ("..", "x"),
    ],
)
def test_bad_lineage_ids_are_a_problem(
    api: httpx.Client, project: str, kind: str, object_id: str
) -> None:
    r = _raw_get(api, f"/api/v1/projects/{project}/lineage/{kind}/{object_id}".encode())
    assert_problem(r)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ({"kind": "blob", "id": "../../etc"}, {"kind": "run", "id": "r1"}),
        ({"kind": "blob", "id": "a\x00b"}, {"kind": "run", "id": "r1"}),
        ({"kind": "../blob", "id": "a"}, {"kind": "run", "id": "r1"}),
        ({"kind": "blob", "id": "a"}, {"kind": "run", "id": "x" * 129}),
        ({"kind": "blob", "id": ""}, {"kind": "run", "id": "r1"}),
    ],
)
def test_bad_lineage_refs_are_refused_on_create(
    api: httpx.Client, project: str, src: dict[str, str], dst: dict[str, str]
) -> None:
    body = {"src": src, "relation": "input_of", "dst": dst}
    assert_problem(api.post(f"{API}/projects/{project}/lineage", json=body), 422)


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"limit": "0"},
        {"limit": "many"},
        {"after_seq": "-1"},
        {"outcome": "maybe"},
        {"actor": "a" * 65},
    ],
)
def test_bad_audit_filters_are_a_problem(api: httpx.Client, params: dict[str, str]) -> None:
    assert_problem(api.get(f"{API}/audit", params=params))


@pytest.mark.parametrize("params", [{"actor": "a\x00b"}, {"project": "\x00"}, {"action": "\x00"}])
def test_nul_in_audit_filters_is_never_a_server_error(
    api: httpx.Client, params: dict[str, str]
) -> None:
    r = api.get(f"{API}/audit", params=params)
    if r.status_code >= 400:
        assert_problem(r)
    else:
        assert r.json() == []


def test_bad_token_id_is_a_problem(api: httpx.Client) -> None:
    for token_id in ("abc", "1.5", "2147483648", "99999999999999999999999", "-1"):
        r = api.delete(f"{API}/tokens/{token_id}")
        assert_problem(r)


# -- routes, methods and request ids ---------------------------------------------------------


def test_unknown_route_is_a_404_problem(api: httpx.Client) -> None:
    r = api.get(f"{API}/no-such-thing")
    body = assert_problem(r, 404)
    assert body["type"] == "urn:underlay:problem:not-found"
    assert "/api/v1/no-such-thing" in body["detail"]


def test_unknown_route_without_a_token_is_a_problem(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{server.url}/definitely/not/here")
    assert r.status_code in (401, 404)
    assert_problem(r)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/projects"),
        ("PUT", "/projects"),
        ("POST", "/audit/verify"),
        ("PATCH", "/tokens"),
        ("POST", "/healthz"),
    ],
)
def test_wrong_method_is_a_405_problem(api: httpx.Client, method: str, path: str) -> None:
    r = api.request(method, f"{API}{path}")
    assert_problem(r, 405)
    assert "allow" in r.headers


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/projects", {"GET", "POST"}),
        ("/projects/vision", {"GET", "DELETE"}),
        ("/projects/vision/members/ann", {"PATCH", "DELETE"}),
        ("/tokens", {"GET", "POST"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(
    api: httpx.Client, path: str, allowed: set[str]
) -> None:
    r = api.request("PUT", f"{API}{path}")
    assert_problem(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


def test_a_valid_client_request_id_is_echoed(api: httpx.Client) -> None:
    rid = "client-chosen.id_0042"
    r = api.get(f"{API}/no-such-thing", headers={"X-Request-ID": rid})
    assert r.headers["x-request-id"] == rid
    refused = assert_problem(r, 404)
    assert (refused["request_id"], refused["instance"]) == (rid, f"{API}/no-such-thing")
    ok = api.get(f"{API}/users/me", headers={"X-Request-ID": rid})
    assert ok.status_code == 200
    assert ok.headers["x-request-id"] == rid


@pytest.mark.parametrize(
    "rid", ["short", "has spaces in it", "x" * 65, "semi;colon-id", "new\\nline-ish"]
)
def test_an_invalid_client_request_id_is_replaced(api: httpx.Client, rid: str) -> None:
    r = api.get(f"{API}/no-such-thing", headers={"X-Request-ID": rid})
    body = assert_problem(r, 404)
    assert r.headers["x-request-id"] != rid
    assert body["request_id"] == r.headers["x-request-id"]


def test_every_response_gets_a_fresh_request_id(api: httpx.Client) -> None:
    ids = {api.get(f"{API}/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_an_unexpected_error_is_a_500_problem_with_the_request_id(settings) -> None:  # type: ignore[no-untyped-def]
    """A fault inside a route: a generic problem, the request id in header and body, no trace.

    Its own app on its own platform, with no live server beside it: building a second app
    while another one in the process handles requests races pydantic's lazy schema building.
    """
    from underlay.api.app import create_app
    from underlay.platform import Platform

    platform = Platform(settings)
    platform.start()
    app = create_app(platform, start=False)

    @app.get("/api/v1/explode", include_in_schema=False)
    def explode() -> None:
        raise RuntimeError("internal detail that must stay on the server")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"X-Request-ID": "fault-injection-01"}
            return await client.get("/api/v1/explode", headers=headers)

    r = asyncio.run(call())
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:underlay:problem:error"
    assert body["request_id"] == "fault-injection-01"
    assert r.headers.get("x-request-id") == "fault-injection-01"
    assert "internal detail" not in r.text and "Traceback" not in r.text
    platform.close()


# -- NUL and strict types --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/projects", {"name": "nul", "description": "a\x00b"}, "description"),
        ("/users", {"name": "ann", "email": "ann\x00@example.com"}, "email"),
        ("/users", {"name": "ann", "email": "ann@example.com\r\nBcc: x"}, "email"),
        ("/users", {"name": "ann", "password": "passw\x00rd-long"}, "password"),
        ("/projects/vision/jobs", {"command": ["true"], "name": "a\x00b"}, "name"),
        ("/nodes/n1/cordon", {"reason": "hot\x00"}, "reason"),
        ("/auth/login", {"user": "ann\x00", "password": "x"}, "user"),
    ],
)
def test_nul_and_control_characters_are_refused_at_the_schema(
    api: httpx.Client, project: str, path: str, payload: Any, field: str
) -> None:
    r = api.post(f"{API}{path}", json=payload)
    body = assert_problem(r, 422)
    assert any(field in e["loc"] for e in body["errors"]), body["errors"]
    assert [p["name"] for p in api.get(f"{API}/projects").json()] == ["vision"]
    assert "ann" not in [u["name"] for u in api.get(f"{API}/users").json()]


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("PUT", "/projects/vision/budget", {"money_per_month": False}, "money_per_month"),
        ("PUT", "/projects/vision/budget", {"gpu_hours_per_month": True}, "gpu_hours_per_month"),
        ("POST", "/tokens", {"name": "t", "expires_in_days": True}, "expires_in_days"),
        ("POST", "/tokens", {"name": "t", "expires_in_days": "7"}, "expires_in_days"),
        ("POST", "/users", {"name": "ann", "is_admin": 1}, "is_admin"),
        ("POST", "/projects/vision/jobs", {"command": ["true"], "gpus": False}, "gpus"),
    ],
)
def test_booleans_and_strings_are_not_numbers(
    api: httpx.Client, project: str, method: str, path: str, payload: Any, field: str
) -> None:
    r = api.request(method, f"{API}{path}", json=payload)
    body = assert_problem(r, 422)
    assert any(field in e["loc"] for e in body["errors"]), body["errors"]
    assert api.get(f"{API}/projects/vision/budget").json()["money_limit"] is None


def test_nul_in_a_blob_name_is_refused(api: httpx.Client, project: str) -> None:
    r = api.put(f"{API}/projects/vision/blobs", params={"name": "a\x00b"}, content=b"data")
    assert_problem(r, 422)
    assert api.get(f"{API}/projects/vision/blobs").json() == []


def test_the_openapi_document_describes_every_refusal_as_a_problem(api: httpx.Client) -> None:
    schema = api.get(f"{API}/openapi.json").json()
    assert set(schema["components"]["schemas"]["Problem"]["properties"]) >= {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "request_id",
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # ours replaces it
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    refusals = [
        response
        for operations in schema["paths"].values()
        for operation in operations.values()
        for status, response in operation.get("responses", {}).items()
        if status in ("401", "404", "422")
    ]
    assert refusals and all(r.get("content") == problem for r in refusals)

"""Authentication and authorization through real HTTP: 401, 404 without leaks, 403, audit."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from sqlalchemy import update

from underlay.client import Client
from underlay.errors import Conflict, NotFound, PermissionDenied, Unauthenticated
from underlay.store import Scope
from underlay.store.models import ApiToken


@pytest.fixture
def people(server, admin):  # type: ignore[no-untyped-def]
    admin.create_project("vision")
    admin.create_project("finance")
    tokens = {}
    for user, project, role in [
        ("alice", "vision", "member"),
        ("victor", "vision", "viewer"),
        ("bob", "finance", "member"),
    ]:
        admin.create_user(user)
        admin.add_member(project, user, role)
        tokens[user] = admin.create_token("t", user=user).token
    clients = {u: server.client(t) for u, t in tokens.items()}
    yield clients
    for c in clients.values():
        c.close()


def test_no_token_is_401_with_problem(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{server.url}/api/v1/projects")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:underlay:problem:unauthenticated"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Bearer" in r.headers["www-authenticate"]


def test_wrong_token_is_401(server) -> None:  # type: ignore[no-untyped-def]
    with (
        server.client("ul_not-a-real-token") as c,
        pytest.raises(Unauthenticated, match="not valid"),
    ):
        c.list_projects()


def test_revoked_token_is_401(server, admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("short")
    with server.client(created.token) as c:
        assert c.me().name == "admin"
        admin.revoke_token(created.id)
        with pytest.raises(Unauthenticated, match="revoked"):
            c.me()


def test_expired_token_is_401(server, admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("soon", expires_in_days=1)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with server.platform.db.session(Scope.everything()) as s:  # time passes
        s.execute(update(ApiToken).where(ApiToken.id == created.id).values(expires_at=past))
    with server.client(created.token) as c, pytest.raises(Unauthenticated, match="expired"):
        c.me()


def test_deactivated_user_loses_access(server, admin, people) -> None:  # type: ignore[no-untyped-def]
    admin.update_user("alice", is_active=False)
    with pytest.raises(Unauthenticated):
        people["alice"].list_projects()


def test_other_project_is_404_like_a_missing_one(people) -> None:  # type: ignore[no-untyped-def]
    bob = people["bob"]
    with pytest.raises(NotFound, match="project 'vision' not found") as hidden:
        bob.read_project("vision")
    with pytest.raises(NotFound, match="project 'nothing' not found") as missing:
        bob.read_project("nothing")
    assert type(hidden.value) is type(missing.value)
    with pytest.raises(NotFound):
        bob.list_blobs("vision")
    assert [p.name for p in bob.list_projects()] == ["finance"]


def test_viewer_cannot_write_but_can_read(people) -> None:  # type: ignore[no-untyped-def]
    victor, alice = people["victor"], people["alice"]
    blob = alice.upload_blob("vision", b"features")
    assert victor.download_blob("vision", blob.digest) == b"features"
    with pytest.raises(PermissionDenied, match=r"viewer .* may not write"):
        victor.upload_blob("vision", b"more")
    assert len(alice.list_blobs("vision")) == 1


def test_member_cannot_manage_members(people) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDenied, match="admin role"):
        people["alice"].add_member("vision", "bob", "viewer")


def test_non_admin_cannot_create_users(people) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDenied, match="global admin"):
        people["alice"].create_user("mallory")


def test_project_keeps_an_admin(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("carol")
    admin.grant("carol", "project-creator")
    token = admin.create_token("t", user="carol").token
    with server.client(token) as carol:
        carol.create_project("solo")
        assert [(m.user, m.role) for m in carol.list_members("solo")] == [("carol", "admin")]
        with pytest.raises(Conflict, match="no admin left"):
            carol.update_member("solo", "carol", "member")


def test_refusals_are_audited(server, admin, people) -> None:  # type: ignore[no-untyped-def]
    httpx.get(f"{server.url}/api/v1/projects")
    with server.client("ul_wrong") as c, pytest.raises(Unauthenticated):
        c.me()
    with pytest.raises(NotFound):
        people["bob"].read_project("vision")
    with pytest.raises(PermissionDenied):
        people["victor"].upload_blob("vision", b"x")
    denied = admin.list_audit(outcome="denied", limit=1000)
    seen = {(e.actor, e.action) for e in denied}
    assert ("anonymous", "GET /api/v1/projects") in seen
    assert ("anonymous", "GET /api/v1/users/me") in seen
    assert ("bob", "project.read") in seen
    assert ("victor", "blob.create") in seen
    assert admin.verify_audit().ok


def test_mutations_are_audited_with_client_address(admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("audited")
    entries = admin.list_audit(action="project.create")
    assert [(e.actor, e.resource, e.outcome, e.client) for e in entries] == [
        ("admin", "project:audited", "ok", "127.0.0.1")
    ]


def test_token_secret_is_shown_once(admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("once")
    listed = [t for t in admin.list_tokens() if t.id == created.id]
    assert listed and not hasattr(listed[0], "token")
    assert created.token.startswith(created.prefix)


def test_sdk_from_env(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("UNDERLAY_URL", server.url)
    monkeypatch.setenv("UNDERLAY_TOKEN", server.admin_token)
    with Client.from_env() as c:
        assert c.me().is_admin

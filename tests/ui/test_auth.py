"""Dashboard sign-in, sessions and CSRF, over real HTTP against a live server."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select, update

from tests.conftest import ADMIN_TOKEN
from tests.ui.conftest import PASSWORD, PROJECT, Site
from underlay.store import Scope
from underlay.store.models import AuditEntry, UiSession


def _audit(site: Site, action: str) -> list[AuditEntry]:
    with site.live.platform.db.session(Scope.everything()) as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_pages_redirect_to_sign_in_and_back(site: Site) -> None:
    client = site.anonymous()
    response = client.get("/nodes?x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fnodes%3Fx%3D1"
    client.get(response.headers["location"])
    signed = client.post("/login", {"user": "max", "password": PASSWORD, "next": "/nodes?x=1"})
    assert signed.status_code == 303
    assert signed.headers["location"] == "/nodes?x=1"


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_sign_in_never_redirects_off_site(site: Site, target: str) -> None:
    client = site.anonymous()
    client.get("/login")
    response = client.post("/login", {"user": "max", "password": PASSWORD, "next": target})
    assert response.headers["location"] == "/"


def test_session_cookie_is_httponly_strict_and_stored_hashed(site: Site) -> None:
    client = site.anonymous()
    client.get("/login")
    response = client.post("/login", {"user": "vera", "password": PASSWORD, "next": "/"})
    cookie = next(c for c in response.headers.get_list("set-cookie") if "underlay_session=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Max-Age=28800" in cookie
    assert "Secure" not in cookie  # plain HTTP here; TLS adds it
    secret = client.http.cookies["underlay_session"]
    with site.live.platform.db.session(Scope.everything()) as s:
        hashes = set(s.scalars(select(UiSession.secret_hash)))
    assert hashlib.sha256(secret.encode()).hexdigest() in hashes
    assert secret not in hashes


def test_wrong_password_is_refused_with_a_message_and_counted(site: Site) -> None:
    client = site.anonymous()
    client.get("/login")
    response = client.post("/login", {"user": "max", "password": "not it", "next": "/"})
    assert response.status_code == 401
    assert "wrong user name or password" in response.text
    assert "underlay_session" not in client.http.cookies
    assert any(e.outcome == "denied" for e in _audit(site, "ui.login"))


def test_sign_in_with_a_token_and_revocation_ends_the_session(site: Site) -> None:
    with site.admin() as admin:
        created = admin.create_token("for-the-ui")
    client = site.anonymous()
    client.get("/login")
    response = client.post("/login", {"token": created.token, "next": "/"})
    assert response.status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    assert ">admin<" in page.text or "admin" in page.text
    with site.live.client(ADMIN_TOKEN) as admin:
        admin.revoke_token(created.id)
    assert client.get("/").status_code == 303


def test_a_bad_token_is_refused(site: Site) -> None:
    client = site.anonymous()
    client.get("/login")
    response = client.post("/login", {"token": "ul_nope", "next": "/"})
    assert response.status_code == 401
    assert "the token is not valid" in response.text


def test_sign_out_deletes_the_session(site: Site) -> None:
    client = site.signed_in("max")
    cookie = client.http.cookies["underlay_session"]
    response = client.post("/logout", {})
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    replay = site.anonymous()
    replay.http.cookies.set("underlay_session", cookie)
    assert replay.get("/").status_code == 303


def test_an_expired_session_signs_in_again(site: Site) -> None:
    client = site.signed_in("max")
    with site.live.platform.db.session(Scope.everything()) as s:
        s.execute(update(UiSession).values(expires_at=dt.datetime.now(dt.UTC)))
    assert client.get("/").status_code == 303


def test_posts_without_or_with_a_wrong_csrf_token_are_refused_and_audited(site: Site) -> None:
    client = site.signed_in("max")
    missing = client.post("/logout", {}, csrf=False)
    assert missing.status_code == 403
    assert "CSRF" in missing.text
    wrong = client.post("/logout", {"csrf": "0" * 64}, csrf=False)
    assert wrong.status_code == 403
    denied = [e for e in _audit(site, "ui.post /logout") if e.actor == "max"]
    assert len(denied) >= 2
    assert all(e.outcome == "denied" for e in denied)
    assert client.get("/").status_code == 200  # still signed in


def test_the_sign_in_form_needs_its_own_csrf_cookie(site: Site) -> None:
    client = site.anonymous()
    response = client.post("/login", {"user": "max", "password": PASSWORD}, csrf=False)
    assert response.status_code == 403


def test_a_form_that_is_not_urlencoded_is_refused(site: Site) -> None:
    client = site.signed_in("max")
    response = client.http.post("/logout", content=b"{}", headers={"content-type": "text/json"})
    assert response.status_code == 400


def test_the_api_and_probes_are_untouched(site: Site) -> None:
    client = site.anonymous()
    assert client.get("/healthz").status_code == 200
    api = client.get("/api/v1/nodes")
    assert api.status_code == 401
    assert api.headers["content-type"] == "application/problem+json"
    missing = client.get("/api/v1/no-such-route")
    assert missing.headers["content-type"] == "application/problem+json"
    assert client.get("/ui/static/ui.css").status_code == 200
    assert "/" not in client.get("/api/v1/openapi.json").json()["paths"]


def test_the_cookie_is_secure_when_served_over_tls(site: Site) -> None:
    server = site.live.platform.settings.server
    server.tls = True  # what `underlay up --tls-cert` sets
    try:
        client = site.anonymous()
        client.get("/login")
        response = client.post("/login", {"user": "max", "password": PASSWORD, "next": "/"})
    finally:
        server.tls = False
    cookie = next(c for c in response.headers.get_list("set-cookie") if "underlay_session=" in c)
    assert "Secure" in cookie


def test_repeated_wrong_passwords_back_off(site: Site) -> None:
    limit = site.live.platform.settings.security.login_max_failures
    client = site.anonymous()
    client.get("/login")
    for _ in range(limit):
        assert client.post("/login", {"user": "ghost", "password": "guess"}).status_code == 401
    refused = client.post("/login", {"user": "ghost", "password": "guess"})
    assert refused.status_code == 429
    assert "too many failed logins for user &#39;ghost&#39;" in refused.text


def test_a_removed_member_or_deactivated_user_loses_access_at_once(site: Site) -> None:
    with site.admin() as admin:
        admin.create_user("temp", password=PASSWORD)
        admin.add_member(PROJECT, "temp", "member")
        client = site.signed_in("temp")
        assert client.get(f"/projects/{PROJECT}").status_code == 200
        admin.remove_member(PROJECT, "temp")
        assert client.get(f"/projects/{PROJECT}").status_code == 404
        assert client.get("/").status_code == 200
        admin.update_user("temp", is_active=False)
        assert client.get("/").status_code == 303


def test_signed_in_users_skip_the_sign_in_page(site: Site) -> None:
    client = site.signed_in("max")
    response = client.get("/login?next=/jobs")
    assert response.status_code == 303
    assert response.headers["location"] == "/jobs"
    assert client.get("/logout").status_code == 200  # a page with the sign-out button
    assert site.anonymous().get("/logout").status_code == 303


def test_an_agent_token_cannot_sign_in(site: Site) -> None:
    from underlay import identity

    with site.live.platform.db.session(Scope.everything()) as s:
        _, secret = identity.create_agent_token(s, "node-x")
    client = site.anonymous()
    client.get("/login")
    response = client.post("/login", {"token": secret, "next": "/"})
    assert response.status_code == 401
    assert "sign in with a user token, not a job or agent token" in response.text

"""Password login and its rate limit, per user and per client address."""

from __future__ import annotations

import pytest

from underlay import identity
from underlay.errors import RateLimited, Unauthenticated
from underlay.store import Scope


def test_login_returns_a_working_token(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("dora", password="correct horse battery")
    with server.client(None) as anon:
        token = anon.login("dora", "correct horse battery").token
    with server.client(token) as dora:
        assert dora.me().name == "dora"


def test_wrong_password_and_unknown_user_look_the_same(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("erin", password="correct horse battery")
    with server.client(None) as anon:
        with pytest.raises(Unauthenticated, match="wrong user name or password"):
            anon.login("erin", "wrong password")
        with pytest.raises(Unauthenticated, match="wrong user name or password"):
            anon.login("nobody", "wrong password")


def test_repeated_failures_lock_the_user_out(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("fay", password="correct horse battery")
    limit = server.settings.security.login_max_failures
    with server.client(None) as anon:
        for _ in range(limit):
            with pytest.raises(Unauthenticated):
                anon.login("fay", "guess")
        with pytest.raises(RateLimited, match="too many failed logins") as exc:
            anon.login("fay", "correct horse battery")
    assert exc.value.extra["retry_after"] == server.settings.security.login_window_s
    denied = admin.list_audit(action="auth.login", outcome="denied")
    assert any("too many" in e.detail for e in denied)


def test_failures_are_counted_per_address(db, settings) -> None:  # type: ignore[no-untyped-def]
    limit = settings.security.login_max_failures
    with db.session(Scope.everything()) as s:
        for i in range(limit):
            identity.record_login_failure(s, f"user{i}", "10.0.0.9")
    with db.session(Scope.everything()) as s:
        with pytest.raises(RateLimited, match=r"address 10\.0\.0\.9"):
            identity.check_login_allowed(s, "fresh", "10.0.0.9", max_failures=limit, window_s=300)
        identity.check_login_allowed(s, "fresh", "10.0.0.10", max_failures=limit, window_s=300)

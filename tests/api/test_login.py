"""Password login and its back-off, per (user, client address), and a cap per address."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
from argon2 import PasswordHasher

from underlay import identity
from underlay.errors import RateLimited, Unauthenticated
from underlay.store import Scope
from underlay.store.models import LoginFailure


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


class _CountingHasher(PasswordHasher):
    """argon2's own hasher, counting the (equally expensive) hash and verify computations."""

    def __init__(self) -> None:
        super().__init__()
        self.computations = 0

    def hash(self, password, *, salt=None):  # type: ignore[no-untyped-def, override]
        self.computations += 1
        return super().hash(password, salt=salt)

    def verify(self, hash, password):  # type: ignore[no-untyped-def, override]
        self.computations += 1
        return super().verify(hash, password)


def test_unknown_and_inactive_users_cost_one_argon2_computation_like_a_known_one(
    db, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """No timing oracle: a login for a user who does not exist, has no password or is
    deactivated does the same argon2 work as a wrong password for a real user."""
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ivy", password="correct horse battery")
        identity.create_user(s, "nopass")
        identity.create_user(s, "gone", password="correct horse battery")
        identity.update_user(s, "gone", is_active=False)
    counting = _CountingHasher()
    monkeypatch.setattr(identity, "_hasher", counting)
    work = {}
    for user in ("ivy", "nobody", "nopass", "gone"):
        counting.computations = 0
        with (
            db.session(Scope.everything()) as s,
            pytest.raises(Unauthenticated, match="wrong user name or password"),
        ):
            identity.verify_login(s, user, "wrong password")
        work[user] = counting.computations
    assert work == {"ivy": 1, "nobody": 1, "nopass": 1, "gone": 1}


def test_repeated_failures_back_off_that_user_at_that_address(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("fay", password="correct horse battery")
    limit = server.settings.security.login_max_failures
    with server.client(None) as anon:
        for _ in range(limit):
            with pytest.raises(Unauthenticated):
                anon.login("fay", "guess")
        with pytest.raises(RateLimited, match="too many failed logins for user 'fay'") as exc:
            anon.login("fay", "correct horse battery")
    assert 0 < exc.value.extra["retry_after"] <= server.settings.security.login_backoff_s
    denied = admin.list_audit(action="auth.login", outcome="denied")
    assert any("too many" in e.detail for e in denied)


def _login(server, user: str, password: str, source: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, base_url=server.url, timeout=30) as c:
        return c.post("/api/v1/auth/login", json={"user": user, "password": password})


def test_an_attackers_failures_do_not_lock_the_user_out_elsewhere(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("gil", password="correct horse battery")
    limit = server.settings.security.login_max_failures
    for _ in range(limit):
        assert _login(server, "gil", "guess", "127.0.0.2").status_code == 401
    refused = _login(server, "gil", "correct horse battery", "127.0.0.2")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert refused.headers["content-type"] == "application/problem+json"
    mine = _login(server, "gil", "correct horse battery", "127.0.0.1")
    assert mine.status_code == 201, mine.text
    # the user's own success does not reset the attacker's back-off
    assert _login(server, "gil", "correct horse battery", "127.0.0.2").status_code == 429
    clients = {e.client for e in admin.list_audit(action="auth.login", outcome="denied")}
    assert clients == {"127.0.0.2"}


def _fail(db, user: str, address: str, at: dt.datetime, times: int = 1) -> None:  # type: ignore[no-untyped-def]
    with db.session(Scope.everything()) as s:
        for _ in range(times):
            s.add(LoginFailure(user_name=user, address=address, at=at))


def test_the_back_off_doubles_with_each_failure_up_to_a_cap(db) -> None:  # type: ignore[no-untyped-def]
    limits = identity.LoginLimits(max_failures=5, window_s=3600, backoff_s=30, backoff_max_s=200)
    t0 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    _fail(db, "hal", "10.0.0.1", t0, times=4)
    with db.session(Scope.everything()) as s:
        identity.check_login_allowed(s, "hal", "10.0.0.1", limits, now=t0)
    waits = []
    for _ in range(5, 10):
        _fail(db, "hal", "10.0.0.1", t0)
        with db.session(Scope.everything()) as s:
            with pytest.raises(RateLimited, match=r"from address 10\.0\.0\.1") as exc:
                identity.check_login_allowed(s, "hal", "10.0.0.1", limits, now=t0)
            waits.append(exc.value.retry_after)
            later = t0 + dt.timedelta(seconds=exc.value.retry_after)
            identity.check_login_allowed(s, "hal", "10.0.0.1", limits, now=later)
            identity.check_login_allowed(s, "hal", "10.0.0.2", limits, now=t0)
            identity.check_login_allowed(s, "other", "10.0.0.1", limits, now=t0)
    assert waits == [30, 60, 120, 200, 200]
    with db.session(Scope.everything()) as s:  # failures older than the window are forgotten
        identity.check_login_allowed(s, "hal", "10.0.0.1", limits, now=t0 + dt.timedelta(hours=2))


def test_one_address_failing_for_many_users_is_refused(db) -> None:  # type: ignore[no-untyped-def]
    limits = identity.LoginLimits(max_failures=5, max_failures_per_address=10)
    now = dt.datetime.now(dt.UTC)
    for i in range(10):
        _fail(db, f"user{i}", "10.0.0.9", now)
    with db.session(Scope.everything()) as s:
        with pytest.raises(RateLimited, match=r"from address 10\.0\.0\.9"):
            identity.check_login_allowed(s, "fresh", "10.0.0.9", limits, now=now)
        identity.check_login_allowed(s, "fresh", "10.0.0.10", limits, now=now)

"""Identity's login rules on the store: the back-off per (user, address) and per address at
the edges of its window, long names and addresses, what a successful login clears
(``make mutation MODULE=identity``; the HTTP face is tested in ``tests/api/test_login.py``).
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay import identity
from underlay.errors import RateLimited, Unauthenticated
from underlay.store import Database, Scope
from underlay.store.models import LoginFailure

PASSWORD = "correct horse battery"


# -- limits ---------------------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def _failures(s: Session, *at: dt.datetime, user: str = "ann", address: str = "10.0.0.9") -> None:
    for when in at:
        s.add(LoginFailure(user_name=user, address=address, at=when))
    s.flush()


def _wait(
    s: Session, limits: identity.LoginLimits, user: str = "ann", address: str = "10.0.0.9"
) -> RateLimited | None:
    """The RateLimited refusal, or None if the login may go ahead."""
    try:
        identity.check_login_allowed(s, user, address, limits, now=NOW)
    except RateLimited as exc:
        return exc
    return None


def test_only_failures_inside_the_window_count_its_first_instant_included(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=2, window_s=100, backoff_s=60, backoff_max_s=10**6)
    since = NOW - dt.timedelta(seconds=100)
    with db.session(Scope.everything()) as s:
        old = since - dt.timedelta(seconds=1)
        _failures(s, old, old, old, NOW - dt.timedelta(seconds=10))
        assert _wait(s, limits) is None  # one failure inside the window
        _failures(s, NOW - dt.timedelta(seconds=10))
        refused = _wait(s, limits)  # two inside: 60 s after the last, not 8 min (5 failures)
        assert refused is not None and str(refused).endswith("try again in 50 s")
    with db.session(Scope.everything()) as s:
        _failures(s, since, NOW - dt.timedelta(seconds=10), user="bob")
        refused = _wait(s, limits, user="bob")  # the failure at the window's first instant
        assert refused is not None and refused.retry_after == 50


def test_a_wait_under_a_second_still_refuses_and_rounds_up(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=1, backoff_s=60)
    with db.session(Scope.everything()) as s:
        _failures(s, NOW - dt.timedelta(seconds=59, milliseconds=500))
        refused = _wait(s, limits)
        assert refused is not None and refused.retry_after == 1
        assert str(refused) == (
            "too many failed logins for user 'ann' from address 10.0.0.9; try again in 1 s"
        )


def test_the_back_off_stops_doubling_after_30_doublings(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=1, window_s=10**6, backoff_s=1, backoff_max_s=2**40)
    with db.session(Scope.everything()) as s:
        _failures(s, *[NOW] * 32)  # 31 beyond the limit
        refused = _wait(s, limits)
        assert refused is not None and refused.retry_after == 2**30


def test_long_user_names_and_addresses_are_counted_by_their_first_64_characters(
    db: Database,
) -> None:
    limits = identity.LoginLimits(max_failures=2, backoff_s=60)
    user, address = "u" * 100, "a" * 100
    with db.session(Scope.everything()) as s:
        for _ in range(2):
            identity.record_login_failure(s, user, address)
        s.flush()
        stored = s.execute(select(LoginFailure.user_name, LoginFailure.address)).all()
        assert {tuple(row) for row in stored} == {("u" * 64, "a" * 64)}
        refused = _wait(s, limits, user=user, address=address)
        assert refused is not None and f"for user {'u' * 64!r} from address {'a' * 64};" in str(
            refused
        )


def test_an_address_is_refused_at_its_limit_inside_the_window_only(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=100, window_s=100, max_failures_per_address=3)
    since = NOW - dt.timedelta(seconds=100)
    with db.session(Scope.everything()) as s:
        old = since - dt.timedelta(seconds=1)
        for user in ("u1", "u2", "u3"):
            _failures(s, old, user=user)
        _failures(s, NOW, NOW, user="u4")
        assert _wait(s, limits, user="ann") is None  # two inside the window
        _failures(s, since, user="u5")  # the window's first instant counts
        refused = _wait(s, limits, user="ann")
        assert refused is not None and refused.retry_after == 100
        assert str(refused) == "too many failed logins from address 10.0.0.9; try again in 100 s"


def test_a_limit_of_one_failure_per_address_allows_the_first_attempt(db: Database) -> None:
    limits = identity.LoginLimits(max_failures_per_address=1)
    with db.session(Scope.everything()) as s:
        assert _wait(s, limits) is None
        _failures(s, NOW)
        assert _wait(s, limits) is not None


# -- what a login clears, and what it checks --------------------------------------------------


def test_a_login_clears_its_own_user_and_address_only(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=2, backoff_s=600)
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann", password=PASSWORD)
        for user in ("ann", "bob"):
            _failures(s, NOW, NOW, user=user)
        _failures(s, NOW, NOW, address="")  # no address known (e.g. the CLI on the server)
        identity.verify_login(s, "ann", PASSWORD, "10.0.0.9")
        assert _wait(s, limits) is None
        assert _wait(s, limits, user="bob") is not None  # another user's failures stay
        assert _wait(s, limits, address="") is not None
        identity.verify_login(s, "ann", PASSWORD)  # the address defaults to ""
        assert _wait(s, limits, address="") is None


def test_a_login_from_a_long_address_clears_the_failures_recorded_for_it(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=2, backoff_s=600)
    address = "a" * 100
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann", password=PASSWORD)
        for _ in range(2):
            identity.record_login_failure(s, "ann", address)
        s.flush()
        assert _wait(s, limits, address=address) is not None
        identity.verify_login(s, "ann", PASSWORD, address)
        assert _wait(s, limits, address=address) is None


def test_a_login_checks_the_first_1024_characters_of_the_password(db: Database) -> None:
    long = "p" * 1024
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann", password=long)
        assert identity.verify_login(s, "ann", long + "ignored").id == ann.id
        with pytest.raises(Unauthenticated, match=r"^wrong user name or password$"):
            identity.verify_login(s, "ann", "q" + long)

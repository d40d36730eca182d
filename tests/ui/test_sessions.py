"""Dashboard sessions in the store, on SQLite and PostgreSQL: opened, found, expired, closed;
only the secret's hash is kept; the CSRF token is per session; ``next`` stays on the site."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select, update

from underlay import identity
from underlay.errors import Unauthenticated
from underlay.identity import SYSTEM, Action
from underlay.store import Database, Scope
from underlay.store.models import Role, UiSession
from underlay.ui import auth


def test_a_session_finds_its_caller_until_it_expires_or_closes(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        user = identity.create_user(s, "ann", password="correct horse battery")
        project = identity.create_project(s, "vision", SYSTEM)
        identity.add_member(s, project, "ann", Role.viewer)
        secret = auth.open_session(s, user, token_id=None, address="10.0.0.1", ttl_s=60)
        other = auth.open_session(s, user, token_id=None, address="10.0.0.1", ttl_s=60)
    with db.session(Scope.everything()) as s:
        stored = set(s.scalars(select(UiSession.secret_hash)))
        assert hashlib.sha256(secret.encode()).hexdigest() in stored
        assert secret not in stored
        caller = auth.caller_for(s, secret)
        assert caller is not None
        assert caller.user_name == "ann"
        assert [p.name for p in caller.projects] == ["vision"]
        assert caller.can(Action.read, "vision") and not caller.can(Action.write, "vision")
        assert not caller.can(Action.read, "elsewhere")
        assert caller.csrf != auth.caller_for(s, other).csrf  # type: ignore[union-attr]
        auth.close_session(s, secret)
    with db.session(Scope.everything()) as s:
        assert auth.caller_for(s, secret) is None
        s.execute(update(UiSession).values(expires_at=dt.datetime.now(dt.UTC)))
        assert auth.caller_for(s, other) is None
        assert auth.caller_for(s, "not a session") is None


def test_only_user_tokens_open_sessions(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        user = identity.create_user(s, "ann")
        _, secret = identity.create_token(s, user, "t", expires_in_days=1)
        assert auth.user_for_token(s, secret)[0].name == "ann"
        _, agent = identity.create_agent_token(s, "node-1")
        with pytest.raises(Unauthenticated, match="sign in with a user token"):
            auth.user_for_token(s, agent)
        with pytest.raises(Unauthenticated, match="the token is not valid"):
            auth.user_for_token(s, "ul_nothing")


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("/jobs?state=queued", "/jobs?state=queued"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("jobs", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/jobs\r\nSet-Cookie: x=1", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_next_is_a_path_on_this_site(value: str | None, kept: str) -> None:
    assert auth.safe_next(value) == kept

"""Identity services on the store, continued: who may stop what, passwords and their tokens,
the first admin's recovery token, project deletion (``make mutation MODULE=identity``).

``tests/test_identity.py`` holds the other rules; this file keeps both under 600 lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from underlay import identity
from underlay.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from underlay.identity import Actor
from underlay.store import Database, Scope
from underlay.store.models import Membership, Project, Role, UserGrant

PASSWORD = "correct horse battery"
WRONG = r"^the current password is wrong; nothing was changed$"


# -- authorize_owner --------------------------------------------------------------------------


def test_only_the_owner_a_project_admin_or_a_global_admin_may_stop_a_thing() -> None:
    project = Project(id=7, name="vision")
    identity.authorize_owner(Actor(1, "root", True), project, 2, "job 5")  # a global admin
    identity.authorize_owner(Actor(2, "ann", False, {7: Role.viewer}), project, 2, "job 5")
    identity.authorize_owner(Actor(3, "bob", False, {7: Role.admin}), project, 2, "job 5")
    identity.authorize_owner(Actor(3, "bob", False, {7: Role.admin}), project, None, "job 5")
    refused = (
        Actor(3, "bob", False, {7: Role.member}),  # a member who does not own it
        Actor(3, "bob", False, {7: Role.member, 8: Role.admin}),  # another project's admin
    )
    for actor in refused:
        for owner in (2, None):  # an owner-less thing belongs to no plain member
            with pytest.raises(PermissionDenied) as exc:
                identity.authorize_owner(actor, project, owner, "job 5")
            assert str(exc.value) == (
                "bob does not own job 5; only its owner or an admin of project 'vision' may do this"
            )


# -- passwords --------------------------------------------------------------------------------


def test_changing_ones_password_checks_the_old_one_and_revokes_the_other_tokens(
    db: Database,
) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann", password=PASSWORD)
        bob = identity.create_user(s, "bob", password=PASSWORD)
        calling, _ = identity.create_token(s, ann, "calling", expires_in_days=None)
        other, _ = identity.create_token(s, ann, "other", expires_in_days=None)
        old, _ = identity.create_token(s, ann, "old", expires_in_days=None)
        bobs, _ = identity.create_token(s, bob, "bobs", expires_in_days=None)
        identity.revoke_token(s, Actor(ann.id, "ann", False), old.id)
        revoked_before = old.revoked_at
        actor = Actor(ann.id, "ann", False, token_id=calling.id)
        for wrong in (PASSWORD + "x", "", PASSWORD[:-1]):
            with pytest.raises(PermissionDenied, match=WRONG):
                identity.change_password(s, actor, wrong, "a new password")
        with pytest.raises(InvalidInput, match=r"^password must be 8 to 1024 characters long$"):
            identity.change_password(s, actor, PASSWORD, "short")
        assert other.revoked_at is None  # nothing changed
        assert identity.verify_login(s, "ann", PASSWORD).id == ann.id

        assert identity.change_password(s, actor, PASSWORD, "a new password") is ann
        assert identity.verify_login(s, "ann", "a new password").id == ann.id
        with pytest.raises(Unauthenticated):
            identity.verify_login(s, "ann", PASSWORD)
        assert calling.revoked_at is None  # the calling token is kept
        assert other.revoked_at is not None
        assert old.revoked_at == revoked_before  # an earlier revocation keeps its time
        assert bobs.revoked_at is None  # another user's tokens are not touched


def test_a_password_is_checked_on_its_first_1024_characters_as_at_login(db: Database) -> None:
    long = "p" * 1024
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann", password=long)
        actor = Actor(ann.id, "ann", False)
        identity.change_password(s, actor, long + "ignored", "second password")
        assert identity.verify_login(s, "ann", "second password").id == ann.id


def test_a_password_cannot_be_changed_without_one_or_without_a_user(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        bob = identity.create_user(s, "bob")  # no password: log in by token only
        with pytest.raises(PermissionDenied, match=WRONG):
            identity.change_password(s, Actor(bob.id, "bob", False), "", "a new password")
        with pytest.raises(PermissionDenied, match=WRONG):
            identity.change_password(s, Actor(99999, "gone", False), PASSWORD, "a new password")
        bob.password_hash = "not an argon2 hash"  # a damaged row refuses, it does not crash
        with pytest.raises(PermissionDenied, match=WRONG):
            identity.change_password(s, Actor(bob.id, "bob", False), PASSWORD, "a new password")


def test_an_admin_resetting_a_password_revokes_every_token_of_that_user(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann", password=PASSWORD)
        bob = identity.create_user(s, "bob")
        for name in ("t1", "t2"):
            identity.create_token(s, ann, name, expires_in_days=None)
        bobs, _ = identity.create_token(s, bob, "bobs", expires_in_days=None)
        assert identity.reset_password(s, "ann", "a new password") is ann
        assert identity.verify_login(s, "ann", "a new password").id == ann.id
        assert all(t.revoked_at is not None for t in identity.list_tokens(s, ann.id))
        assert bobs.revoked_at is None
        with pytest.raises(InvalidInput, match=r"^password must be 8 to 1024 characters long$"):
            identity.reset_password(s, "ann", "short")
        with pytest.raises(NotFound, match=r"^user 'nobody' not found$"):
            identity.reset_password(s, "nobody", "a new password")


def test_deactivating_a_user_revokes_its_tokens_and_reactivating_keeps_them_revoked(
    db: Database,
) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        token, secret = identity.create_token(s, ann, "t", expires_in_days=None)
        identity.update_user(s, "ann", is_active=True)
        assert token.revoked_at is None
        identity.update_user(s, "ann", is_admin=True)
        assert token.revoked_at is None and ann.is_admin
        identity.update_user(s, "ann", is_active=False)
        assert token.revoked_at is not None and not ann.is_active
        identity.update_user(s, "ann", is_active=True)
        with pytest.raises(Unauthenticated, match=r"^the token was revoked$"):
            identity.authenticate(s, secret)


# -- the first admin's recovery token ---------------------------------------------------------


def test_resetting_the_bootstrap_token_revokes_only_the_old_bootstrap_tokens(
    db: Database,
) -> None:
    with db.session(Scope.everything()) as s:
        first = identity.bootstrap_admin(s, None)
        assert first is not None
        admin = identity.read_user(s, "admin")
        kept, kept_secret = identity.create_token(s, admin, "laptop", expires_in_days=None)
        token, secret = identity.reset_bootstrap_token(s)
        assert (token.name, token.expires_at, token.user_id) == ("bootstrap", None, admin.id)
        assert identity.authenticate(s, secret).name == "admin"
        with pytest.raises(Unauthenticated, match=r"^the token was revoked$"):
            identity.authenticate(s, first)
        assert identity.authenticate(s, kept_secret).token_id == kept.id
        old = [t for t in identity.list_tokens(s, admin.id) if t.revoked_at is not None]
        assert len(old) == 1
        revoked_at = old[0].revoked_at
        identity.reset_bootstrap_token(s, "admin")  # again: the first one keeps its time
        assert old[0].revoked_at == revoked_at
        assert token.revoked_at is not None


def test_the_bootstrap_token_of_a_deactivated_or_unknown_user_is_not_reset(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        identity.update_user(s, "ann", is_active=False)
        with pytest.raises(Conflict) as exc:
            identity.reset_bootstrap_token(s, "ann")
        assert str(exc.value) == "user 'ann' is deactivated; reactivate it before a new token"
        assert identity.list_tokens(s, ann.id) == []
        with pytest.raises(NotFound, match=r"^user 'admin' not found$"):
            identity.reset_bootstrap_token(s)


# -- projects ---------------------------------------------------------------------------------


def test_deleting_a_project_removes_its_row_and_memberships(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann")
        project = identity.create_project(s, "vision", identity.SYSTEM)
        kept = identity.create_project(s, "kept", identity.SYSTEM)
        identity.add_member(s, project, "ann", Role.admin)
        identity.add_member(s, kept, "ann", Role.admin)
        identity.delete_project(s, project)
        s.flush()
        assert [p.name for p in identity.list_projects(s, identity.SYSTEM)] == ["kept"]
    with db.session(Scope.everything()) as s:
        rows = s.scalar(select(func.count()).select_from(Membership))
        assert rows == 1


# -- grants, long names, exact messages -------------------------------------------------------


def test_taking_a_grant_back_takes_only_that_grant_of_that_user(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        bob = identity.create_user(s, "bob")
        for name in ("ann", "bob"):
            identity.add_grant(s, name, identity.PROJECT_CREATOR)
        s.add(UserGrant(user_id=ann.id, name="later-grant"))  # one a newer version gives
        s.flush()
        assert identity.remove_grant(s, "ann", identity.PROJECT_CREATOR) is ann
        assert ann.grants == ["later-grant"]
        assert identity.grants_of(s, ann.id) == {"later-grant"}
        assert identity.grants_of(s, bob.id) == {identity.PROJECT_CREATOR}
        with pytest.raises(NotFound, match=r"^user 'nobody' not found$"):
            identity.remove_grant(s, "nobody", identity.PROJECT_CREATOR)
        with pytest.raises(InvalidInput) as exc:
            identity.remove_grant(s, "ann", "r" * 100)
        assert str(exc.value) == f"unknown grant {'r' * 40!r}; grants are: project-creator"


def test_a_missing_project_is_not_found_by_its_name_cut_at_80(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        for name, shown in (("missing", "missing"), ("X" * 100, "X" * 80)):
            with pytest.raises(NotFound) as exc:
                identity.read_project(s, name, identity.SYSTEM)
            assert str(exc.value) == f"project {shown!r} not found"
        with pytest.raises(NotFound) as exc:
            identity.read_user(s, "X" * 100)
        assert str(exc.value) == f"user {'X' * 80!r} not found"


def test_another_nodes_agent_is_refused_with_the_node_name_cut_at_128() -> None:
    agent = Actor(1, "agent", False, {}, 6, kind=identity.TokenKind.agent, node="n1")
    with pytest.raises(PermissionDenied) as exc:
        identity.authorize_agent(agent, "n" * 200)
    assert str(exc.value) == f"only node {'n' * 128!r}'s agent may do this: use its agent token"


def test_an_agent_token_for_a_long_node_name_gets_a_63_character_name(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        token, secret = identity.create_agent_token(s, "N" * 100)
        assert token.name == ("agent-" + "n" * 100)[:63] and token.node == "N" * 100
        assert identity.authenticate(s, secret).node == "N" * 100


def test_an_imported_admin_token_too_short_is_refused_with_the_rule(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        with pytest.raises(InvalidInput) as exc:
            identity.import_token(s, ann, "boot", "x" * 31)
        assert str(exc.value) == "an admin token must be at least 32 characters long"


def test_projects_and_members_are_listed_by_name_not_by_creation(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        for name in ("cy", "ann", "bob"):
            identity.create_user(s, name)
        for name in ("zeta", "alpha", "mid"):
            identity.create_project(s, name, identity.SYSTEM)
        project = identity.read_project(s, "mid", identity.SYSTEM)
        for name, role in (("cy", Role.admin), ("ann", Role.viewer), ("bob", Role.member)):
            identity.add_member(s, project, name, role)
        assert [p.name for p in identity.list_projects(s, identity.SYSTEM)] == [
            "alpha",
            "mid",
            "zeta",
        ]
        assert [(u.name, m.role) for m, u in identity.list_members(s, project)] == [
            ("ann", Role.viewer),
            ("bob", Role.member),
            ("cy", Role.admin),
        ]
        assert [u.name for u in identity.list_users(s)] == ["ann", "bob", "cy"]


def test_adding_a_member_twice_says_to_change_the_role_instead(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann")
        project = identity.create_project(s, "vision", identity.SYSTEM)
        identity.add_member(s, project, "ann", Role.member)
        with pytest.raises(Conflict) as exc:
            identity.add_member(s, project, "ann", Role.admin)
        assert str(exc.value) == (
            "user 'ann' is already member in project 'vision'; change the role with update"
        )


# -- two writers at once (PostgreSQL: SQLite serialises writers with BEGIN IMMEDIATE) --------


def _race(db: Database, s: Session, rival: Callable[[Session], object]) -> None:
    """Let ``rival`` commit in its own session just before ``s`` first flushes: both passed
    their "exists already?" check, and ``s`` loses at the unique constraint."""

    def before_flush(*_: object) -> None:
        with db.session(Scope.everything()) as other:
            rival(other)

    event.listen(s, "before_flush", before_flush, once=True)


RACES = [
    (
        lambda s, p: identity.add_grant(s, "ann", identity.PROJECT_CREATOR),
        "user 'ann' holds 'project-creator' already",
    ),
    (
        lambda s, p: identity.add_member(s, p, "ann", Role.viewer),
        "user 'ann' is already a member of 'vision'",
    ),
    (lambda s, p: identity.create_user(s, "bob"), "user 'bob' exists already"),
    (
        lambda s, p: identity.create_project(s, "other", identity.SYSTEM),
        "project 'other' exists already",
    ),
]


# PostgreSQL only: SQLite serialises writers (BEGIN IMMEDIATE), so this race cannot happen there
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(("write", "message"), RACES)
def test_the_loser_of_two_simultaneous_writes_gets_a_conflict(
    db: Database, write: Callable[[Session, Project | None], object], message: str
) -> None:
    assert db.engine.dialect.name == "postgresql"
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann")
        identity.create_project(s, "vision", identity.SYSTEM)
    with db.session(Scope.everything()) as s:
        project = identity.read_project(s, "vision", identity.SYSTEM)
        _race(db, s, lambda other: write(other, other.get(Project, project.id)))
        with pytest.raises(Conflict) as exc:
            write(s, project)
        assert str(exc.value) == message
        s.rollback()


def test_a_token_secret_is_the_prefix_and_256_random_bits_in_43_url_safe_characters(
    db: Database,
) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        for _ in range(3):
            _, secret = identity.create_token(s, ann, "t", expires_in_days=None)
            assert re.fullmatch(r"ul_[A-Za-z0-9_-]{43}", secret), secret


def test_creating_a_project_follows_the_policy_and_names_the_project_in_errors(
    db: Database,
) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        plain = Actor(ann.id, "ann", False)
        creator = Actor(ann.id, "ann", False, grants=frozenset({identity.PROJECT_CREATOR}))
        project = identity.create_project(s, "open", plain, policy="anyone")
        assert project.description == ""
        with pytest.raises(PermissionDenied, match=r"needs a global admin or the 'project-cr"):
            identity.create_project(s, "closed", plain)  # "creators" unless told
        with pytest.raises(PermissionDenied, match=r"needs a global admin \(ask"):
            identity.create_project(s, "closed", creator, policy="admins")
        with pytest.raises(InvalidInput) as exc:
            identity.create_project(s, "Bad Name", creator)
        assert str(exc.value).startswith("project name 'Bad Name' is not valid: use 1-63")
        assert [p.name for p in identity.list_projects(s, identity.SYSTEM)] == ["open"]


def test_the_default_policy_lets_only_admins_and_granted_creators_make_projects() -> None:
    identity.may_create_projects(Actor(3, "cy", False, grants=frozenset({"project-creator"})))
    identity.may_create_projects(Actor(1, "root", True))
    with pytest.raises(PermissionDenied) as exc:
        identity.may_create_projects(Actor(2, "ann", False))
    assert str(exc.value) == (
        "user 'ann' may not create projects: it needs a global admin or the 'project-creator' "
        "grant (ask a global admin: underlay users grant ann project-creator)"
    )


def test_a_projects_description_is_stored(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        identity.create_project(s, "vision", identity.SYSTEM, "images and such")
    with db.session(Scope.everything()) as s:
        assert identity.read_project(s, "vision", identity.SYSTEM).description == (
            "images and such"
        )


def test_a_users_roles_are_read_whatever_the_sessions_scope(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        a = identity.create_project(s, "a", identity.SYSTEM)
        b = identity.create_project(s, "b", identity.SYSTEM)
        identity.add_member(s, a, "ann", Role.viewer)
        identity.add_member(s, b, "ann", Role.admin)
        _, secret = identity.create_token(s, ann, "t", expires_in_days=None)
    for scope in (Scope.projects(), Scope.projects(a.id)):  # e.g. before the caller is known
        with db.session(scope) as s:
            assert identity.roles_of(s, ann.id) == {a.id: Role.viewer, b.id: Role.admin}
            assert identity.authenticate(s, secret).roles == {a.id: Role.viewer, b.id: Role.admin}


def test_a_bad_user_name_is_refused_as_a_user_name(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        with pytest.raises(InvalidInput) as exc:
            identity.create_user(s, "Bad Name")
        assert str(exc.value).startswith("user name 'Bad Name' is not valid: use 1-63")
        with pytest.raises(InvalidInput) as exc:
            identity.create_user(s, "ann", password="x" * 7)
        assert str(exc.value) == "password must be 8 to 1024 characters long"
        identity.create_user(s, "ann", email="ann@example.org")
    with db.session(Scope.everything()) as s:
        assert identity.read_user(s, "ann").email == "ann@example.org"

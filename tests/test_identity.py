"""Identity services on the store, rule by rule: ``authorize``, tokens, accounts, members.

The HTTP faces are tested in ``tests/api``; these tests pin each rule of
:mod:`underlay.identity` directly (and fast), so that a change to any one of them fails a test
(``make mutation MODULE=identity``).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select, update

from underlay import identity
from underlay.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from underlay.identity import Action, Actor, TokenKind, authorize
from underlay.store import Database, Scope
from underlay.store.models import ApiToken, Project, Role, User
from underlay.store.types import utcnow

PASSWORD = "correct horse battery"
NEEDS_BINDING = r"^job tokens need a project and agent tokens a node, others neither$"
NO_TOKEN = r"^no token given: send 'Authorization: Bearer <token>'$"
NOT_MEMBER = r"^the token's user is no longer a member of its project$"


def _project(pid: int = 7, name: str = "vision") -> Project:
    return Project(id=pid, name=name)


# -- authorize --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.viewer, {Action.read}),
        (Role.member, {Action.read, Action.write}),
        (Role.admin, {Action.read, Action.write, Action.manage}),
    ],
)
def test_each_role_may_do_exactly_its_actions_in_its_project(role: Role, allowed: set) -> None:  # type: ignore[type-arg]
    actor = Actor(1, "ann", False, {7: role})
    for action in (Action.read, Action.write, Action.manage, Action.admin):
        if action in allowed:
            authorize(actor, action, _project())
        elif action is Action.admin:
            with pytest.raises(PermissionDenied, match=r"^ann is not a global admin; only a glob"):
                authorize(actor, action, _project())
        else:
            verb = "administer" if action is Action.manage else "write to"
            with pytest.raises(
                PermissionDenied,
                match=rf"^ann is an? {role} of project 'vision' and may not {verb} it;",
            ):
                authorize(actor, action, _project())


def test_a_non_member_gets_not_found_for_every_action() -> None:
    stranger = Actor(1, "ann", False, {8: Role.admin})
    for action in (Action.read, Action.write, Action.manage):
        with pytest.raises(NotFound, match="project 'vision' not found") as exc:
            authorize(stranger, action, _project())
        assert exc.value.extra == {"denied": True}  # audited as a refusal


def test_global_admins_may_do_anything_and_others_only_read_the_platform() -> None:
    admin = Actor(1, "root", True)
    for action in Action:
        authorize(admin, action, _project())
        authorize(admin, action, None)
    user = Actor(2, "ann", False)
    authorize(user, Action.read, None)
    authorize(user, Action.account, None)
    for action in (Action.write, Action.manage, Action.admin):
        with pytest.raises(PermissionDenied, match="is not a global admin; only a global admin"):
            authorize(user, action, None)


def test_job_and_agent_tokens_may_not_manage_accounts_and_agents_nothing_else() -> None:
    job = Actor(1, "ann", False, {7: Role.member}, 5, kind=TokenKind.job)
    authorize(job, Action.write, _project())
    with pytest.raises(PermissionDenied, match="a job token may not manage accounts"):
        authorize(job, Action.account)
    agent = Actor(1, "agent", True, {7: Role.admin}, 6, kind=TokenKind.agent, node="n1")
    for action in Action:
        with pytest.raises(PermissionDenied, match=r"an agent token \(node 'n1'\) may only"):
            authorize(agent, action, _project())
    identity.authorize_agent(agent, "n1")
    with pytest.raises(PermissionDenied, match="only node 'n2'"):
        identity.authorize_agent(agent, "n2")
    identity.authorize_agent(Actor(1, "root", True), "n2")
    with pytest.raises(PermissionDenied, match="only node 'n2'"):
        identity.authorize_agent(Actor(1, "root", True, kind=TokenKind.job), "n2")
    with pytest.raises(PermissionDenied, match="only node 'n2'"):
        identity.authorize_agent(Actor(1, "ann", False), "n2")


def test_scope_follows_roles() -> None:
    assert Actor(1, "root", True).scope == Scope.everything()
    assert Actor(1, "ann", False, {3: Role.viewer, 4: Role.admin}).scope == Scope.projects(3, 4)


@pytest.mark.parametrize("name", ["a", "ab-c_9", "z" * 63])
def test_valid_names(name: str) -> None:
    assert identity.validate_name("user", name) == name


@pytest.mark.parametrize("name", ["", "9a", "Ab", "a b", "a" * 64, "a.b", "-a", "a\n"])
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    rule = (
        "is not valid: use 1-63 characters, lowercase letters, digits, '-' or '_', "
        "starting with a letter"
    )
    with pytest.raises(InvalidInput) as exc:
        identity.validate_name("project", name)
    assert str(exc.value) == f"project name {name[:80]!r} {rule}"
    with pytest.raises(InvalidInput) as long:
        identity.validate_name("user", "X" * 100)
    assert str(long.value) == f"user name {'X' * 80!r} {rule}"


# -- project creation -------------------------------------------------------------------------


def test_who_may_create_projects_under_each_policy() -> None:
    admin, user = Actor(1, "root", True), Actor(2, "ann", False)
    creator = Actor(3, "cy", False, grants=frozenset({identity.PROJECT_CREATOR}))
    for policy in ("admins", "creators", "anyone"):
        identity.may_create_projects(admin, policy)  # type: ignore[arg-type]
    identity.may_create_projects(user, "anyone")
    identity.may_create_projects(creator, "creators")
    with pytest.raises(PermissionDenied, match=r"needs a global admin \(ask"):
        identity.may_create_projects(creator, "admins")
    with pytest.raises(PermissionDenied, match="needs a global admin or the 'project-creator'"):
        identity.may_create_projects(user, "creators")
    job = Actor(1, "root", True, kind=TokenKind.job)
    with pytest.raises(PermissionDenied, match="a job token may not create projects"):
        identity.may_create_projects(job, "anyone")


def test_creating_a_project_makes_its_creator_admin(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        actor = Actor(ann.id, "ann", False, grants=frozenset({identity.PROJECT_CREATOR}))
        s.info["scope"] = Scope.projects()
        project = identity.create_project(s, "vision", actor, "d" * 1000)
        assert s.info["scope"] == Scope.projects(project.id)
        assert [(m.role, u.name) for m, u in identity.list_members(s, project)] == [
            (Role.admin, "ann")
        ]
        with pytest.raises(InvalidInput, match=r"^project description must be at most 1000 ch"):
            identity.create_project(s, "other", actor, "d" * 1001)
        with pytest.raises(Conflict, match=r"^project 'vision' exists already$"):
            identity.create_project(s, "vision", actor)
        system = identity.create_project(s, "system-made", identity.SYSTEM)
        assert identity.list_members(s, system) == []


# -- users, grants, members -------------------------------------------------------------------


def test_users_are_unique_and_passwords_bounded(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann", password=PASSWORD, email="a@example.org")
        with pytest.raises(Conflict, match=r"^user 'ann' exists already$"):
            identity.create_user(s, "ann")
        for bad in ("x" * 7, "x" * 1025):
            with pytest.raises(InvalidInput, match="password must be 8 to 1024 characters"):
                identity.create_user(s, "bob", password=bad)
        identity.create_user(s, "bob", password="x" * 8)
        identity.create_user(s, "cy", password="x" * 1024)
        assert [u.name for u in identity.list_users(s)] == ["ann", "bob", "cy"]
        with pytest.raises(NotFound, match="user 'nobody' not found"):
            identity.read_user(s, "nobody")
        with pytest.raises(NotFound, match="user 'BAD NAME' not found"):
            identity.read_user(s, "BAD NAME")
        ann = identity.update_user(s, "ann", password="another password", is_admin=True)
        assert ann.is_admin and ann.is_active
        assert identity.verify_login(s, "ann", "another password").name == "ann"


def test_grants_can_be_given_twice_and_taken_back(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        identity.add_grant(s, "ann", identity.PROJECT_CREATOR)
        identity.add_grant(s, "ann", identity.PROJECT_CREATOR)
        assert identity.grants_of(s, ann.id) == {identity.PROJECT_CREATOR}
        identity.remove_grant(s, "ann", identity.PROJECT_CREATOR)
        identity.remove_grant(s, "ann", identity.PROJECT_CREATOR)
        assert identity.grants_of(s, ann.id) == frozenset()
        with pytest.raises(InvalidInput, match="unknown grant 'root'; grants are: project-cr"):
            identity.add_grant(s, "ann", "root")


def test_members_are_added_once_and_a_project_keeps_one_admin(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        for name in ("ann", "bob"):
            identity.create_user(s, name)
        project = identity.create_project(s, "vision", identity.SYSTEM)
        identity.add_member(s, project, "ann", Role.admin)
        elsewhere = identity.create_project(s, "elsewhere", identity.SYSTEM)
        identity.create_user(s, "cy")
        identity.add_member(s, elsewhere, "cy", Role.admin)  # another project's admin
        identity.add_member(s, project, "cy", Role.viewer)  # a member who is not an admin
        with pytest.raises(Conflict, match="user 'ann' is already admin in project 'vision'"):
            identity.add_member(s, project, "ann", Role.viewer)
        with pytest.raises(Conflict, match=r"^project 'vision' would have no admin left; app"):
            identity.update_member(s, project, "ann", Role.member)
        with pytest.raises(Conflict, match=r"^project 'vision' would have no admin left; app"):
            identity.remove_member(s, project, "ann")
        identity.update_member(s, project, "ann", Role.admin)  # admin to admin: harmless
        identity.add_member(s, project, "bob", Role.viewer)
        identity.remove_member(s, project, "bob")  # not an admin: no guard
        identity.add_member(s, project, "bob", Role.admin)
        identity.update_member(s, project, "ann", Role.viewer)
        with pytest.raises(NotFound, match="user 'ann' is not a member of project 'other'"):
            identity.update_member(s, _project(999, "other"), "ann", Role.viewer)
        assert identity.roles_of(s, s.scalar(select(User.id).where(User.name == "ann"))) == {
            project.id: Role.viewer
        }


def test_projects_are_listed_by_membership(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        a = identity.create_project(s, "a", identity.SYSTEM)
        identity.create_project(s, "b", identity.SYSTEM)
        identity.add_member(s, a, "ann", Role.viewer)
        member = Actor(ann.id, "ann", False, identity.roles_of(s, ann.id))
        assert [p.name for p in identity.list_projects(s, member)] == ["a"]
        assert [p.name for p in identity.list_projects(s, identity.SYSTEM)] == ["a", "b"]
        assert identity.read_project(s, "a", member).id == a.id
        with pytest.raises(NotFound, match="project 'b' not found"):
            identity.read_project(s, "b", member)
        with pytest.raises(
            PermissionDenied, match="ann is a viewer of project 'a' and may not write"
        ):
            identity.read_project(s, "a", member, Action.write)
        with pytest.raises(NotFound, match="project 'NOPE' not found"):
            identity.read_project(s, "NOPE", identity.SYSTEM)


# -- tokens -----------------------------------------------------------------------------------


def test_a_token_is_random_prefixed_and_stored_as_its_sha256(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        token, secret = identity.create_token(s, ann, "t", expires_in_days=None)
        _, second = identity.create_token(s, ann, "t", expires_in_days=None)
        assert secret.startswith("ul_") and len(secret) >= 43 and secret != second
        assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert token.prefix == secret[:10] and token.expires_at is None
        assert token.kind == "user" and token.project_id is None and token.node is None


def test_token_lifetimes(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        before = utcnow()
        for days in (1, 3650):
            token, _ = identity.create_token(s, ann, "t", expires_in_days=days)
            assert token.expires_at is not None
            assert (
                dt.timedelta(days=days)
                <= token.expires_at - before
                < dt.timedelta(days=days, minutes=1)
            )
        for days in (0, 3651, -1):
            with pytest.raises(InvalidInput, match=r"^expires_in_days must be between 1 and 3650$"):
                identity.create_token(s, ann, "t", expires_in_days=days)
        short, _ = identity.create_token(s, ann, "t", expires_in_days=30, expires_in_s=90)
        assert short.expires_at is not None
        assert dt.timedelta(seconds=90) <= short.expires_at - before < dt.timedelta(seconds=150)


def test_token_kinds_need_their_binding(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        project = identity.create_project(s, "vision", identity.SYSTEM)
        for kwargs in (
            {"kind": TokenKind.job},
            {"kind": TokenKind.agent},
            {"project_id": project.id},
            {"node": "n1"},
            {"kind": TokenKind.job, "node": "n1"},
            {"kind": TokenKind.agent, "project_id": project.id},
        ):
            with pytest.raises(InvalidInput, match=NEEDS_BINDING):
                identity.create_token(s, ann, "t", expires_in_days=None, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=r"^token name 'Bad Name' is not valid"):
            identity.create_token(s, ann, "Bad Name", expires_in_days=None)


def test_authenticate_says_why_a_token_is_refused(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        token, secret = identity.create_token(s, ann, "t", expires_in_days=1)
        for missing in (None, ""):
            with pytest.raises(Unauthenticated, match=NO_TOKEN):
                identity.authenticate(s, missing)
        with pytest.raises(Unauthenticated, match=r"^the token is not valid$"):
            identity.authenticate(s, secret + "x")
        assert identity.authenticate(s, secret).name == "ann"
        token.expires_at = utcnow() + dt.timedelta(seconds=5)
        identity.authenticate(s, secret)
        token.expires_at = utcnow()
        with pytest.raises(Unauthenticated, match=r"^the token has expired; create a new one$"):
            identity.authenticate(s, secret)
        token.expires_at = None
        ann.is_active = False
        with pytest.raises(Unauthenticated, match=r"^the token's user is deactivated$"):
            identity.authenticate(s, secret)
        ann.is_active = True
        identity.revoke_token(s, Actor(ann.id, "ann", False), token.id)
        with pytest.raises(Unauthenticated, match=r"^the token was revoked$"):
            identity.authenticate(s, secret)


def test_last_used_is_written_at_most_once_a_minute(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        token, secret = identity.create_token(s, ann, "t", expires_in_days=None)
        identity.authenticate(s, secret)
        first = token.last_used_at
        assert first is not None
        identity.authenticate(s, secret)
        assert token.last_used_at == first
        token.last_used_at = first - dt.timedelta(seconds=59)
        identity.authenticate(s, secret)
        assert token.last_used_at == first - dt.timedelta(seconds=59)
        token.last_used_at = first - dt.timedelta(seconds=61)
        identity.authenticate(s, secret)
        assert token.last_used_at is not None and token.last_used_at >= first


def test_a_user_token_carries_roles_grants_and_admin(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann", is_admin=True)
        project = identity.create_project(s, "vision", identity.SYSTEM)
        identity.add_member(s, project, "ann", Role.viewer)
        identity.add_grant(s, "ann", identity.PROJECT_CREATOR)
        token, secret = identity.create_token(s, ann, "t", expires_in_days=None)
        actor = identity.authenticate(s, secret)
    assert (actor.user_id, actor.name, actor.is_admin) == (ann.id, "ann", True)
    assert actor.roles == {project.id: Role.viewer} and actor.token_id == token.id
    assert actor.grants == {identity.PROJECT_CREATOR} and actor.kind is TokenKind.user


def test_a_job_token_acts_in_its_project_at_most_as_a_member(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann", is_admin=True)
        bob = identity.create_user(s, "bob")
        project = identity.create_project(s, "vision", identity.SYSTEM)
        other = identity.create_project(s, "other", identity.SYSTEM)
        identity.add_member(s, other, "ann", Role.admin)
        identity.add_member(s, project, "bob", Role.viewer)

        def job_actor(user: User) -> Actor:
            _, secret = identity.create_token(
                s, user, "job", expires_in_days=None, kind=TokenKind.job, project_id=project.id
            )
            return identity.authenticate(s, secret)

        admins = job_actor(ann)  # a global admin's job: a member of its project, nothing more
        assert admins.is_admin is False and admins.roles == {project.id: Role.member}
        assert (admins.user_id, admins.name) == (ann.id, "ann") and admins.token_id is not None
        assert admins.kind is TokenKind.job and admins.grants == frozenset()
        identity.add_member(s, project, "ann", Role.admin)
        assert job_actor(ann).roles == {project.id: Role.member}  # capped at member
        assert job_actor(bob).roles == {project.id: Role.viewer}  # never above the user
        _, secret = identity.create_token(
            s, bob, "job2", expires_in_days=None, kind=TokenKind.job, project_id=project.id
        )
        identity.remove_member(s, project, "bob")
        with pytest.raises(Unauthenticated, match=NOT_MEMBER):
            identity.authenticate(s, secret)


def test_agent_tokens_belong_to_a_plain_agent_user_and_one_node(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        _, secret = identity.create_agent_token(s, "Node.1")
        actor = identity.authenticate(s, secret)
        assert (actor.kind, actor.node, actor.is_admin, actor.roles) == (
            TokenKind.agent,
            "Node.1",
            False,
            {},
        )
        row = s.scalars(select(ApiToken).where(ApiToken.kind == "agent")).one()
        assert row.name == "agent-node-1" and row.node == "Node.1"
        assert (actor.user_id, actor.name, actor.token_id) == (row.user_id, "agent", row.id)
        agent = s.scalars(select(User).where(User.name == identity.AGENT_USER)).one()
        agent.is_admin = True  # made by an older version
        identity.create_agent_token(s, "n2")
        assert not agent.is_admin
        with pytest.raises(Unauthenticated, match="revoked"):
            identity.authenticate(s, secret)
        assert len(s.scalars(select(User).where(User.name == identity.AGENT_USER)).all()) == 1


def test_revoking_tokens(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        bob = identity.create_user(s, "bob")
        mine, _ = identity.create_token(s, ann, "t", expires_in_days=None)
        theirs, _ = identity.create_token(s, bob, "t", expires_in_days=None)
        as_ann = Actor(ann.id, "ann", False)
        with pytest.raises(NotFound, match=f"token {theirs.id} not found"):
            identity.revoke_token(s, as_ann, theirs.id)
        with pytest.raises(NotFound, match="token 999999 not found"):
            identity.revoke_token(s, as_ann, 999999)
        revoked = identity.revoke_token(s, as_ann, mine.id).revoked_at
        assert revoked is not None
        assert identity.revoke_token(s, as_ann, mine.id).revoked_at == revoked  # kept
        identity.revoke_token(s, Actor(ann.id, "ann", True), theirs.id)  # an admin may
        assert theirs.revoked_at is not None
        assert [t.id for t in identity.list_tokens(s, ann.id)] == [mine.id]


def test_an_imported_admin_token_must_be_long(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        ann = identity.create_user(s, "ann")
        with pytest.raises(InvalidInput, match="at least 32 characters"):
            identity.import_token(s, ann, "boot", "x" * 31)
        token = identity.import_token(s, ann, "boot", "y" * 32)
        assert token.token_hash == hashlib.sha256(b"y" * 32).hexdigest()
        assert token.prefix == "y" * 10
        assert identity.authenticate(s, "y" * 32).name == "ann"


def test_bootstrap_creates_the_first_admin_once(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        secret = identity.bootstrap_admin(s, None)
        assert secret is not None
        actor = identity.authenticate(s, secret)
        assert actor.name == "admin" and actor.is_admin
        assert identity.bootstrap_admin(s, None) is None
    with db.session(Scope.everything()) as s:
        s.execute(update(ApiToken).values(revoked_at=utcnow()))
        assert identity.bootstrap_admin(s, "z" * 40) is None  # users exist: nothing is made
        with pytest.raises(Unauthenticated):
            identity.authenticate(s, "z" * 40)


def test_bootstrap_with_a_chosen_token(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        assert identity.bootstrap_admin(s, "z" * 40) is None
        assert identity.authenticate(s, "z" * 40).is_admin


# -- login ------------------------------------------------------------------------------------


def test_a_successful_login_clears_only_its_own_pair(db: Database) -> None:
    limits = identity.LoginLimits(max_failures=2, backoff_s=60)
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann", password=PASSWORD)
        for address in ("10.0.0.1", "10.0.0.2"):
            for _ in range(2):
                identity.record_login_failure(s, "ann", address)
        s.flush()
        identity.verify_login(s, "ann", PASSWORD, "10.0.0.1")
        identity.check_login_allowed(s, "ann", "10.0.0.1", limits)
        with pytest.raises(RateLimited, match="try again in 60 s"):
            identity.check_login_allowed(s, "ann", "10.0.0.2", limits)


def test_login_refuses_inactive_and_passwordless_users(db: Database) -> None:
    with db.session(Scope.everything()) as s:
        identity.create_user(s, "ann", password=PASSWORD)
        identity.create_user(s, "bob")
        identity.update_user(s, "ann", is_active=False)
        for user in ("ann", "bob"):
            with pytest.raises(Unauthenticated, match=r"^wrong user name or password$"):
                identity.verify_login(s, user, PASSWORD)
        identity.update_user(s, "ann", is_active=True)
        assert identity.verify_login(s, "ann", PASSWORD).name == "ann"
        with pytest.raises(Unauthenticated, match=r"^wrong user name or password$"):
            identity.verify_login(s, "ann", PASSWORD + "x")

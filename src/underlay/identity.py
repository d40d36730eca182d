"""Identity and access: users, projects (tenants), memberships, API tokens, and ``authorize``.

Design decisions:

* Passwords are hashed with argon2id (argon2-cffi defaults). API tokens are 256-bit random
  secrets shown once; only their SHA-256 is stored. A slow hash adds nothing for a secret of
  that entropy, and SHA-256 allows an indexed lookup.
* One :func:`authorize` decides for every face. A caller who is not a member of a project
  gets :class:`~underlay.errors.NotFound` for it, exactly as if it did not exist, so project
  names do not leak; a member whose role is too low gets ``PermissionDenied``.
* Failed logins are counted in the database per (user, client address), so the limit holds
  across server workers and an attacker's guesses back off the attacker's address only, never
  the user's own (exponential back-off per pair; a cap per address against spraying).
* Tokens have a kind. ``user`` tokens act with their user's roles. A ``job`` token is minted
  once per attempt, acts in its job's project only (at most as a member) and is revoked when
  the attempt ends. An ``agent`` token belongs to one node: it may call that node's agent
  routes and nothing else (no project, no account, no admin action). Neither may manage
  accounts or mint tokens, so a job cannot turn its token into a lasting one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from underlay.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from underlay.store import Scope
from underlay.store.models import (
    ApiToken,
    LoginFailure,
    Membership,
    Project,
    Role,
    User,
    UserGrant,
)
from underlay.store.types import utcnow

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
PROJECT_CREATOR = "project-creator"
GRANTS = (PROJECT_CREATOR,)  # platform-wide permissions a global admin gives a user
ProjectCreation = Literal["admins", "creators", "anyone"]
TOKEN_PREFIX = "ul_"  # noqa: S105 - a label, not a secret
BOOTSTRAP_TOKEN = "bootstrap"  # noqa: S105 - the name of the first admin's token
_hasher = PasswordHasher()


class Action(StrEnum):
    """What an actor wants to do; each maps to the least role that may do it."""

    read = "read"  # viewer and up
    write = "write"  # member and up
    manage = "manage"  # project admin: memberships, project settings
    admin = "admin"  # global admin only: users, audit, keys
    account = "account"  # one's own tokens and password: user tokens only


class TokenKind(StrEnum):
    user = "user"
    job = "job"  # one attempt of a job, in its project, while it runs
    agent = "agent"  # one node's agent


_RANK = {Role.viewer: 1, Role.member: 2, Role.admin: 3}
_NEEDS = {Action.read: Role.viewer, Action.write: Role.member, Action.manage: Role.admin}
_VERB = {
    Action.read: "read",
    Action.write: "write to",
    Action.manage: "administer",
    Action.admin: "administer",
}


@dataclass(frozen=True)
class Actor:
    """Who is calling: a user, with their project roles, through one token."""

    user_id: int
    name: str
    is_admin: bool
    roles: dict[int, Role] = field(default_factory=dict)
    token_id: int | None = None
    kind: TokenKind = TokenKind.user
    node: str | None = None  # agent tokens: the node they speak for
    grants: frozenset[str] = frozenset()

    @property
    def scope(self) -> Scope:
        if self.is_admin:
            return Scope.everything()
        return Scope(frozenset(self.roles))


SYSTEM = Actor(user_id=0, name="system", is_admin=True)


def validate_name(kind: str, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"{kind} name {name[:80]!r} is not valid: use 1-63 characters, lowercase letters, "
            "digits, '-' or '_', starting with a letter"
        )
    return name


def authorize_agent(actor: Actor, node: str) -> None:
    """Only ``node``'s own agent (or a global admin) may speak for ``node``."""
    if actor.kind is TokenKind.agent and actor.node == node:
        return
    if actor.kind is TokenKind.user and actor.is_admin:
        return
    raise PermissionDenied(f"only node {node[:128]!r}'s agent may do this: use its agent token")


def authorize(actor: Actor, action: Action, project: Project | None = None) -> None:
    """Allow or refuse ``action`` by ``actor`` on ``project`` (None: the platform itself)."""
    if actor.kind is TokenKind.agent:
        raise PermissionDenied(
            f"an agent token (node {actor.node!r}) may only be used by its node's agent"
        )
    if action is Action.account:
        if actor.kind is not TokenKind.user:
            raise PermissionDenied(
                f"a {actor.kind} token may not manage accounts or tokens; use a user token"
            )
        return
    if actor.is_admin:
        return
    if action is Action.admin or project is None:
        if action is Action.read and project is None:
            return
        raise PermissionDenied(
            f"{actor.name} is not a global admin; only a global admin may {_VERB[action]} this"
        )
    role = actor.roles.get(project.id)
    if role is None:
        raise NotFound(f"project {project.name!r} not found", denied=True)
    needed = _NEEDS[action]
    if _RANK[role] < _RANK[needed]:
        article = "an" if role is Role.admin else "a"
        raise PermissionDenied(
            f"{actor.name} is {article} {role} of project {project.name!r} and may not "
            f"{_VERB[action]} it; ask a project admin for the {needed} role"
        )


def authorize_owner(actor: Actor, project: Project, owner_id: int | None, what: str) -> None:
    """Only the owner of ``what``, an admin of its project or a global admin may stop it
    (Slurm's rule for ``scancel``); call after ``authorize(actor, Action.write, project)``."""
    if actor.is_admin or (owner_id is not None and actor.user_id == owner_id):
        return
    if actor.roles.get(project.id) is Role.admin:
        return
    raise PermissionDenied(
        f"{actor.name} does not own {what}; only its owner or an admin of project "
        f"{project.name!r} may do this"
    )


# -- users ----------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    if not 8 <= len(password) <= 1024:
        raise InvalidInput("password must be 8 to 1024 characters long")
    return _hasher.hash(password)


def create_user(
    session: Session,
    name: str,
    *,
    password: str | None = None,
    email: str | None = None,
    is_admin: bool = False,
) -> User:
    validate_name("user", name)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} exists already")
    user = User(
        name=name,
        email=email,
        password_hash=hash_password(password) if password else None,
        is_admin=is_admin,
    )
    session.add(user)
    _flush_unique(session, f"user {name!r} exists already")
    return user


def read_user(session: Session, name: str) -> User:
    if not NAME_RE.fullmatch(name):
        raise NotFound(f"user {name[:80]!r} not found")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"user {name!r} not found")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def update_user(
    session: Session,
    name: str,
    *,
    password: str | None = None,
    is_active: bool | None = None,
    is_admin: bool | None = None,
) -> User:
    user = read_user(session, name)
    if password is not None:
        user.password_hash = hash_password(password)
    if is_active is not None:
        user.is_active = is_active
        if not is_active:
            revoke_all_tokens(session, user.id)
    if is_admin is not None:
        user.is_admin = is_admin
    return user


def change_password(session: Session, actor: Actor, old: str, new: str) -> User:
    """Set ``actor``'s own password after checking the current one; the user's other tokens
    are revoked (a leaked password may have minted them), the calling token is kept."""
    user = session.get(User, actor.user_id)
    try:
        if user is None or not user.password_hash:
            raise VerificationError
        _hasher.verify(user.password_hash, old[:1024])
    except (VerificationError, InvalidHashError):
        raise PermissionDenied("the current password is wrong; nothing was changed") from None
    user.password_hash = hash_password(new)
    for token in list_tokens(session, user.id):
        if token.revoked_at is None and token.id != actor.token_id:
            token.revoked_at = utcnow()
    return user


def reset_password(session: Session, name: str, new: str) -> User:
    """A global admin sets ``name``'s password; every token of that user is revoked."""
    user = read_user(session, name)
    user.password_hash = hash_password(new)
    revoke_all_tokens(session, user.id)
    return user


def _check_grant(grant: str) -> str:
    if grant not in GRANTS:
        raise InvalidInput(f"unknown grant {grant[:40]!r}; grants are: {', '.join(GRANTS)}")
    return grant


def grants_of(session: Session, user_id: int) -> frozenset[str]:
    rows = session.scalars(select(UserGrant.name).where(UserGrant.user_id == user_id))
    return frozenset(rows)


def add_grant(session: Session, user_name: str, grant: str) -> User:
    """Give ``user_name`` a platform-wide grant (granting twice is harmless)."""
    _check_grant(grant)
    user = read_user(session, user_name)
    if grant not in grants_of(session, user.id):
        session.add(UserGrant(user_id=user.id, name=grant))
        _flush_unique(session, f"user {user_name!r} holds {grant!r} already")
        session.expire(user, ["grant_rows"])
    return user


def remove_grant(session: Session, user_name: str, grant: str) -> User:
    """Take a grant back (revoking one not held is harmless)."""
    _check_grant(grant)
    user = read_user(session, user_name)
    session.execute(delete(UserGrant).where(UserGrant.user_id == user.id, UserGrant.name == grant))
    session.expire(user, ["grant_rows"])
    return user


# -- projects and memberships ---------------------------------------------------------------


def may_create_projects(actor: Actor, policy: ProjectCreation = "creators") -> None:
    """Refuse ``actor`` creating a project under ``security.project_creation``: ``admins``
    (global admins only), ``creators`` (and users granted ``project-creator``), ``anyone``.
    Job and agent tokens never create projects."""
    if actor.kind is not TokenKind.user:
        raise PermissionDenied(f"a {actor.kind} token may not create projects")
    if actor.is_admin or policy == "anyone":
        return
    if policy == "creators" and PROJECT_CREATOR in actor.grants:
        return
    needs = "a global admin"
    if policy == "creators":
        needs += f" or the {PROJECT_CREATOR!r} grant"
    raise PermissionDenied(
        f"user {actor.name!r} may not create projects: it needs {needs} "
        f"(ask a global admin: underlay users grant {actor.name} {PROJECT_CREATOR})"
    )


def create_project(
    session: Session,
    name: str,
    owner: Actor,
    description: str = "",
    *,
    policy: ProjectCreation = "creators",
) -> Project:
    may_create_projects(owner, policy)
    validate_name("project", name)
    if len(description) > 1000:
        raise InvalidInput("project description must be at most 1000 characters")
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"project {name!r} exists already")
    project = Project(name=name, description=description)
    session.add(project)
    _flush_unique(session, f"project {name!r} exists already")
    if owner.user_id:
        session.info["scope"] = _widen(session, project.id)
        session.add(Membership(project_id=project.id, user_id=owner.user_id, role=Role.admin))
        session.flush()
    return project


def read_project(
    session: Session, name: str, actor: Actor, action: Action = Action.read
) -> Project:
    """The project called ``name``, if ``actor`` may do ``action`` on it."""
    if not NAME_RE.fullmatch(name):
        raise NotFound(f"project {name[:80]!r} not found")
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"project {name!r} not found")
    authorize(actor, action, project)
    return project


def list_projects(session: Session, actor: Actor) -> list[Project]:
    query = select(Project).order_by(Project.name)
    if not actor.is_admin:
        query = query.where(Project.id.in_(list(actor.roles)))
    return list(session.scalars(query))


def delete_project(session: Session, project: Project) -> None:
    """Delete the project row; memberships, its data key, blob rows and lineage edges go with
    it (``ON DELETE CASCADE``). Faces call :meth:`underlay.platform.Platform.delete_project`,
    which first removes what the domains hold and then the files."""
    session.delete(project)


def add_member(session: Session, project: Project, user_name: str, role: Role) -> Membership:
    user = read_user(session, user_name)
    existing = session.scalar(
        select(Membership).where(Membership.project_id == project.id, Membership.user_id == user.id)
    )
    if existing is not None:
        raise Conflict(
            f"user {user_name!r} is already {existing.role} in project {project.name!r}; "
            "change the role with update"
        )
    membership = Membership(project_id=project.id, user_id=user.id, role=role)
    session.add(membership)
    _flush_unique(session, f"user {user_name!r} is already a member of {project.name!r}")
    return membership


def list_members(session: Session, project: Project) -> list[tuple[Membership, User]]:
    rows = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.project_id == project.id)
        .order_by(User.name)
    )
    return [(m, u) for m, u in rows]


def _read_membership(session: Session, project: Project, user_name: str) -> Membership:
    user = read_user(session, user_name)
    membership = session.scalar(
        select(Membership).where(Membership.project_id == project.id, Membership.user_id == user.id)
    )
    if membership is None:
        raise NotFound(f"user {user_name!r} is not a member of project {project.name!r}")
    return membership


def update_member(session: Session, project: Project, user_name: str, role: Role) -> Membership:
    membership = _read_membership(session, project, user_name)
    if membership.role == Role.admin and role != Role.admin:
        _keep_one_admin(session, project)
    membership.role = role
    return membership


def remove_member(session: Session, project: Project, user_name: str) -> None:
    membership = _read_membership(session, project, user_name)
    if membership.role == Role.admin:
        _keep_one_admin(session, project)
    session.delete(membership)


def _keep_one_admin(session: Session, project: Project) -> None:
    admins = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.project_id == project.id, Membership.role == Role.admin)
    )
    if (admins or 0) <= 1:
        raise Conflict(f"project {project.name!r} would have no admin left; appoint one first")


def roles_of(session: Session, user_id: int) -> dict[int, Role]:
    rows = session.execute(
        select(Membership.project_id, Membership.role)
        .where(Membership.user_id == user_id)
        .execution_options(skip_scope=True)  # resolving the caller's own scope
    )
    return {pid: Role(role) for pid, role in rows}


# -- tokens ---------------------------------------------------------------------------------


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session,
    user: User,
    name: str,
    *,
    expires_in_days: int | None,
    kind: TokenKind = TokenKind.user,
    project_id: int | None = None,
    node: str | None = None,
    expires_in_s: float | None = None,
) -> tuple[ApiToken, str]:
    """A new token for ``user``; the secret is returned once and never stored. ``job`` tokens
    need ``project_id``, ``agent`` tokens ``node``."""
    validate_name("token", name)
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise InvalidInput("expires_in_days must be between 1 and 3650")
    if (kind is TokenKind.job) != (project_id is not None) or (
        (kind is TokenKind.agent) != (node is not None)
    ):
        raise InvalidInput("job tokens need a project and agent tokens a node, others neither")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    lifetime = dt.timedelta(days=expires_in_days) if expires_in_days else None
    if expires_in_s is not None:
        lifetime = dt.timedelta(seconds=expires_in_s)
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=_digest(secret),
        prefix=secret[:10],
        expires_at=utcnow() + lifetime if lifetime else None,
        kind=str(kind),
        project_id=project_id,
        node=node,
    )
    session.add(token)
    session.flush()
    return token, secret


def import_token(session: Session, user: User, name: str, secret: str) -> ApiToken:
    """Register a token whose secret an operator chose (``UNDERLAY_ADMIN_TOKEN``)."""
    if len(secret) < 32:
        raise InvalidInput("an admin token must be at least 32 characters long")
    token = ApiToken(user_id=user.id, name=name, token_hash=_digest(secret), prefix=secret[:10])
    session.add(token)
    session.flush()
    return token


def list_tokens(session: Session, user_id: int) -> list[ApiToken]:
    return list(
        session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id))
    )


def revoke_token(session: Session, actor: Actor, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or (token.user_id != actor.user_id and not actor.is_admin):
        raise NotFound(f"token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def revoke_all_tokens(session: Session, user_id: int) -> None:
    for token in list_tokens(session, user_id):
        if token.revoked_at is None:
            token.revoked_at = utcnow()


def authenticate(session: Session, secret: str | None) -> Actor:
    """The actor a bearer token stands for; ``Unauthenticated`` for anything else."""
    if not secret:
        raise Unauthenticated("no token given: send 'Authorization: Bearer <token>'")
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(secret)))
    now = utcnow()
    if token is None:
        raise Unauthenticated("the token is not valid")
    if token.revoked_at is not None:
        raise Unauthenticated("the token was revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthenticated("the token has expired; create a new one")
    user = session.get(User, token.user_id)
    if user is None or not user.is_active:
        raise Unauthenticated("the token's user is deactivated")
    if token.last_used_at is None or now - token.last_used_at > dt.timedelta(minutes=1):
        token.last_used_at = now
    kind = TokenKind(token.kind)
    if kind is TokenKind.agent:
        return Actor(user.id, user.name, False, {}, token.id, kind=kind, node=token.node)
    roles = roles_of(session, user.id)
    if kind is TokenKind.job:
        assert token.project_id is not None
        held = roles.get(token.project_id, Role.member if user.is_admin else None)
        if held is None:
            raise Unauthenticated("the token's user is no longer a member of its project")
        capped = held if _RANK[held] <= _RANK[Role.member] else Role.member
        return Actor(user.id, user.name, False, {token.project_id: capped}, token.id, kind=kind)
    # the user's grants came with it (``grant_rows`` loads with the user): no query of its own
    return Actor(user.id, user.name, user.is_admin, roles, token.id, grants=frozenset(user.grants))


AGENT_USER = "agent"


def create_agent_token(session: Session, node: str) -> tuple[ApiToken, str]:
    """A token for ``node``'s agent, owned by the built-in user ``agent`` (no password, no
    project, not an admin; made so if an older version had made it an admin, whose tokens are
    then revoked). It can speak for ``node`` only."""
    user = session.scalar(select(User).where(User.name == AGENT_USER))
    if user is None:
        user = create_user(session, AGENT_USER)
    elif user.is_admin:
        user.is_admin = False
        revoke_all_tokens(session, user.id)
    name = f"agent-{node.lower()}"[:63]
    safe = re.sub(r"[^a-z0-9_-]", "-", name)
    return create_token(session, user, safe, expires_in_days=None, kind=TokenKind.agent, node=node)


# -- login ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginLimits:
    """How failed logins are limited (``security.login_*`` settings)."""

    max_failures: int = 5
    window_s: int = 3600
    backoff_s: int = 30
    backoff_max_s: int = 900
    max_failures_per_address: int = 50


def check_login_allowed(
    session: Session,
    user_name: str,
    address: str,
    limits: LoginLimits,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Refuse (``RateLimited`` with the seconds to wait) a login that must back off.

    Failures count per (user, address): an attacker's guesses slow down the attacker's
    address only, never the user's own. At ``max_failures`` the pair waits ``backoff_s``
    after its last failure, doubling with each further one up to ``backoff_max_s``. One
    address failing for many users is refused outright at ``max_failures_per_address``.
    """
    now = now or utcnow()
    since = now - dt.timedelta(seconds=limits.window_s)
    user_name, address = user_name[:64], address[:64]
    count, last = session.execute(
        select(func.count(), func.max(LoginFailure.at)).where(
            LoginFailure.user_name == user_name,
            LoginFailure.address == address,
            LoginFailure.at >= since,
        )
    ).one()
    if count >= limits.max_failures and last is not None:
        doublings = min(count - limits.max_failures, 30)
        delay = min(limits.backoff_s * 2**doublings, limits.backoff_max_s)
        wait = (last + dt.timedelta(seconds=delay) - now).total_seconds()
        if wait > 0:
            raise RateLimited(
                f"too many failed logins for user {user_name!r} from address {address}; "
                f"try again in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )
    from_address = session.scalar(
        select(func.count())
        .select_from(LoginFailure)
        .where(LoginFailure.address == address, LoginFailure.at >= since)
    )
    if (from_address or 0) >= limits.max_failures_per_address:
        raise RateLimited(
            f"too many failed logins from address {address}; try again in {limits.window_s} s",
            retry_after=limits.window_s,
        )


def verify_login(session: Session, user_name: str, password: str, address: str = "") -> User:
    """The user if the password matches; ``Unauthenticated`` (one message for all cases)."""
    user = session.scalar(select(User).where(User.name == user_name[:64]))
    try:
        if user is None or not user.password_hash or not user.is_active:
            _hasher.hash(password[:1024])  # same work either way: no timing oracle
            raise VerificationError
        _hasher.verify(user.password_hash, password[:1024])
    except (VerificationError, InvalidHashError):
        raise Unauthenticated("wrong user name or password") from None
    # only this pair's count resets: a user logging in does not clear an attacker's back-off
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.user_name == user.name, LoginFailure.address == address[:64]
        )
    )
    return user


def record_login_failure(session: Session, user_name: str, address: str) -> None:
    session.add(LoginFailure(user_name=user_name[:64], address=address[:64]))


# -- bootstrap ------------------------------------------------------------------------------


def bootstrap_admin(session: Session, admin_token: str | None) -> str | None:
    """On first start, create user ``admin`` with a token; returns a generated secret once."""
    if session.scalar(select(func.count()).select_from(User)):
        return None
    admin = create_user(session, "admin", is_admin=True)
    if admin_token:
        import_token(session, admin, BOOTSTRAP_TOKEN, admin_token)
        return None
    _, secret = create_token(session, admin, BOOTSTRAP_TOKEN, expires_in_days=None)
    return secret


def reset_bootstrap_token(session: Session, user_name: str = "admin") -> tuple[ApiToken, str]:
    """Revoke ``user_name``'s bootstrap token(s) and give it a new one that does not expire:
    the local recovery of a lost first admin token. The user must exist and be active."""
    user = read_user(session, user_name)
    if not user.is_active:
        raise Conflict(f"user {user_name!r} is deactivated; reactivate it before a new token")
    for token in list_tokens(session, user.id):
        if token.name == BOOTSTRAP_TOKEN and token.revoked_at is None:
            token.revoked_at = utcnow()
    return create_token(session, user, BOOTSTRAP_TOKEN, expires_in_days=None)


def _widen(session: Session, project_id: int) -> Scope:
    scope: Scope = session.info["scope"]
    if scope.project_ids is None:
        return scope
    return Scope(scope.project_ids | {project_id})


def _flush_unique(session: Session, message: str) -> None:
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise Conflict(message) from exc

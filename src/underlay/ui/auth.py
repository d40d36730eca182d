"""Dashboard sessions, the signed-in caller, and CSRF.

Design decisions:

* A session is a random 256-bit secret in the ``underlay_session`` cookie (HttpOnly,
  SameSite=Strict, Secure over TLS); the database keeps only its SHA-256 (table
  ``ui_sessions``), with an expiry (``ui.session_ttl_s``). Signing out deletes the row.
* Every request rebuilds the caller's :class:`~underlay.identity.Actor` from the database
  (roles, grants, active flag), so a removed membership or a deactivated user takes effect at
  once; a session opened with an API token ends when that token is revoked or expires.
* The CSRF token is derived from the session secret (a keyed hash), so it needs no storage,
  differs per session and cannot be computed without the cookie. Every POST carries it in a
  hidden ``csrf`` field; a missing or wrong one is refused (403) and audited. The sign-in
  form, which has no session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import Depends, Request
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from underlay import identity
from underlay.api.deps import client_address, get_platform
from underlay.errors import (
    InvalidInput,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    UnderlayError,
)
from underlay.identity import Action, Actor, TokenKind, authorize
from underlay.platform import Platform, audit_text
from underlay.store import Scope
from underlay.store.models import ApiToken, Project, Role, UiSession, User
from underlay.store.types import utcnow

COOKIE = "underlay_session"
LOGIN_COOKIE = "underlay_login"  # the sign-in form's double-submit CSRF cookie
CSRF_FIELD = "csrf"


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class ProjectRef:
    id: int
    name: str
    role: str  # the caller's role; "admin" for a global admin who is no member


@dataclass
class UiCaller:
    """The signed-in user of one request."""

    actor: Actor
    user_name: str
    csrf: str
    projects: list[ProjectRef] = field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return self.actor.is_admin

    def project(self, name: str) -> ProjectRef | None:
        return next((p for p in self.projects if p.name == name), None)

    def can(self, action: Action | str, project: str | None = None) -> bool:
        """Whether ``authorize`` would allow ``action`` (on ``project``, if named)."""
        target = None
        if project is not None:
            ref = self.project(project)
            if ref is None:
                return False
            target = Project(id=ref.id, name=ref.name)
        try:
            authorize(self.actor, Action(action), target)
        except UnderlayError:  # PermissionDenied, or NotFound for a non-member
            return False
        return True


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode(), b"underlay-ui-csrf", hashlib.sha256).hexdigest()


def safe_next(value: str | None) -> str:
    """A local path to go to after signing in; anything else (another host, a scheme,
    ``//host``, a backslash trick, control characters) becomes ``/``."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(c in value for c in "\\\r\n\t\x00") or len(value) > 2000:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def is_tls(request: Request, platform: Platform) -> bool:
    return request.url.scheme == "https" or platform.settings.server.tls


def _actor_for(session: Session, user: User, token_id: int | None) -> Actor:
    roles = identity.roles_of(session, user.id)
    grants = identity.grants_of(session, user.id)
    return Actor(user.id, user.name, user.is_admin, roles, token_id, grants=grants)


def _projects_of(session: Session, actor: Actor) -> list[ProjectRef]:
    refs = []
    for project in identity.list_projects(session, actor):
        role = actor.roles.get(project.id)
        refs.append(ProjectRef(project.id, project.name, str(role or Role.admin)))
    return refs


def open_session(
    session: Session, user: User, *, token_id: int | None, address: str, ttl_s: int
) -> str:
    """A new session for ``user``; returns the cookie's secret (shown nowhere else)."""
    now = utcnow()
    session.execute(delete(UiSession).where(UiSession.expires_at <= now))  # housekeeping
    secret = secrets.token_urlsafe(32)
    session.add(
        UiSession(
            secret_hash=_digest(secret),
            user_id=user.id,
            token_id=token_id,
            address=address[:64],
            expires_at=now + dt.timedelta(seconds=ttl_s),
        )
    )
    return secret


def close_session(session: Session, secret: str) -> None:
    session.execute(delete(UiSession).where(UiSession.secret_hash == _digest(secret)))


def user_for_token(session: Session, secret: str) -> tuple[User, int]:
    """The user a (user-kind) API token belongs to, and the token's id."""
    actor = identity.authenticate(session, secret)
    if actor.kind is not TokenKind.user or actor.token_id is None:
        raise Unauthenticated("sign in with a user token, not a job or agent token")
    user = session.get(User, actor.user_id)
    assert user is not None
    return user, actor.token_id


def caller_for(session: Session, secret: str) -> UiCaller | None:
    """The caller a session cookie stands for, or None (unknown, expired, user gone or
    deactivated, or its token revoked)."""
    row = session.scalar(select(UiSession).where(UiSession.secret_hash == _digest(secret)))
    now = utcnow()
    if row is None or row.expires_at <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    if row.token_id is not None:  # opened with a token: it must still be good
        token = session.get(ApiToken, row.token_id)
        if token is None or token.revoked_at is not None:
            return None
        if token.expires_at is not None and token.expires_at <= now:
            return None
    actor = _actor_for(session, user, row.token_id)
    return UiCaller(actor, user.name, csrf_for(secret), _projects_of(session, actor))


def _current_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def optional_caller(request: Request) -> UiCaller | None:
    """The signed-in caller, or None."""
    request.state.ui = True  # errors on this request render as dashboard pages
    secret = request.cookies.get(COOKIE)
    if not secret or len(secret) > 128:
        return None
    platform = get_platform(request)
    with platform.db.session(Scope.everything()) as session:
        caller = caller_for(session, secret)
    request.state.ui_caller = caller
    return caller


def ui_caller(
    request: Request, caller: Annotated[UiCaller | None, Depends(optional_caller)]
) -> UiCaller:
    """The signed-in caller; without a session, the page redirects to ``/login?next=…``."""
    if caller is None:
        raise LoginRequired(_current_path(request))
    return caller


def refuse(request: Request, caller: UiCaller | None, message: str) -> PermissionDenied:
    """Audit a refused dashboard post and return the error to raise."""
    platform = get_platform(request)
    platform.audit.record(
        actor=caller.user_name if caller else "anonymous",
        action=audit_text(f"ui.post {request.url.path}", 128),
        resource=audit_text(request.url.path, 512),
        client=client_address(request),
        outcome="denied",
        detail={"error": message},
    )
    return PermissionDenied(message)


MAX_FORM_BYTES = 256 * 1024


async def read_form(request: Request) -> FormData:
    """A URL-encoded form body (the only kind the dashboard posts), at most 256 KiB."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"a form may hold at most {MAX_FORM_BYTES // 1024} KiB")
    if body and kind != "application/x-www-form-urlencoded":
        raise InvalidInput("post the form as application/x-www-form-urlencoded")
    try:
        pairs: list[tuple[str, str | UploadFile]] = list(
            parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=1000)
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("the form is not valid URL-encoded UTF-8") from exc
    return FormData(pairs)


async def ui_form(request: Request, caller: Annotated[UiCaller, Depends(ui_caller)]) -> FormData:
    """The posted form, once its CSRF token is checked (403, audited, when missing or wrong)."""
    form = await read_form(request)
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent, caller.csrf):
        raise refuse(request, caller, "the form's CSRF token is missing or wrong; reload the page")
    return form


def check_csrf(form: FormData, expected: str) -> bool:
    sent = form.get(CSRF_FIELD)
    return isinstance(sent, str) and bool(expected) and hmac.compare_digest(sent, expected)


def set_session_cookie(response: Response, secret: str, *, ttl_s: int, secure: bool) -> None:
    response.set_cookie(
        COOKIE, secret, max_age=ttl_s, path="/", secure=secure, httponly=True, samesite="strict"
    )


def login_redirect(next_path: str) -> str:
    return f"/login?next={quote(safe_next(next_path), safe='')}"


Caller = Annotated[UiCaller, Depends(ui_caller)]
MaybeCaller = Annotated[UiCaller | None, Depends(optional_caller)]
Form = Annotated[FormData, Depends(ui_form)]
PlatformDep = Annotated[Platform, Depends(get_platform)]

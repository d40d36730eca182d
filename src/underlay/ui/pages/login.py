"""``/login`` (by user name and password, or by API token) and ``/logout``."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from underlay import identity
from underlay.api.deps import client_address
from underlay.api.routes.tokens import login_limits
from underlay.errors import RateLimited, Unauthenticated
from underlay.identity import SYSTEM
from underlay.store import Scope
from underlay.ui import auth
from underlay.ui.auth import MaybeCaller, PlatformDep
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)


def _login_page(
    request: Request, *, next_path: str, error: str = "", user: str = "", status: int = 200
) -> Response:
    """The sign-in form, with a fresh double-submit CSRF cookie (no session exists yet)."""
    csrf = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status_code=status,
        csrf=csrf,
        next=auth.safe_next(next_path),
        error=error,
        user=user[:64],
    )
    response.set_cookie(
        auth.LOGIN_COOKIE, csrf, max_age=3600, path="/login", httponly=True, samesite="strict"
    )
    return response


@router.get("/login")
def login_form(request: Request, caller: MaybeCaller, next: str = "/") -> Response:
    if caller is not None:
        return RedirectResponse(auth.safe_next(next), status_code=303)
    return _login_page(request, next_path=next)


def _sign_in(
    platform: PlatformDep, request: Request, user_name: str, password: str, token: str
) -> str:
    """The session secret for a good sign-in; raises Unauthenticated or RateLimited."""
    address = client_address(request)
    settings = platform.settings
    resource = f"user:{user_name[:64]}" if not token else "token"
    if token:
        with platform.unit(SYSTEM, "ui.login", resource, client=address) as u:
            user, token_id = auth.user_for_token(u.session, token)
            u.resource = f"user:{user.name}"
            return auth.open_session(
                u.session, user, token_id=token_id, address=address, ttl_s=settings.ui.session_ttl_s
            )
    with platform.unit(SYSTEM, "ui.login", resource, client=address, audited=False) as u:
        identity.check_login_allowed(u.session, user_name, address, login_limits(settings.security))
    try:
        with platform.unit(SYSTEM, "ui.login", resource, client=address) as u:
            user = identity.verify_login(u.session, user_name, password, address)
            return auth.open_session(
                u.session, user, token_id=None, address=address, ttl_s=settings.ui.session_ttl_s
            )
    except Unauthenticated:
        with platform.db.session(Scope.everything()) as session:
            identity.record_login_failure(session, user_name, address)
        raise


@router.post("/login")
async def login(request: Request, platform: PlatformDep) -> Response:
    request.state.ui = True
    form = await auth.read_form(request)
    fields = {k: v if isinstance(v, str) else "" for k, v in form.items()}
    next_path = auth.safe_next(fields.get("next"))
    user_name, password = fields.get("user", "")[:64], fields.get("password", "")[:1024]
    token = fields.get("token", "")[:256]
    expected = request.cookies.get(auth.LOGIN_COOKIE, "")
    sent = fields.get(auth.CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(sent, expected):
        raise auth.refuse(request, None, "the sign-in form expired; reload the page and try again")
    if not token and not (user_name and password):
        return _login_page(
            request,
            next_path=next_path,
            error="Give a user name and password, or a token.",
            user=user_name,
            status=400,
        )
    try:
        secret = _sign_in(platform, request, user_name, password, token)
    except (Unauthenticated, RateLimited) as exc:
        return _login_page(
            request, next_path=next_path, error=exc.message, user=user_name, status=exc.status
        )
    response = RedirectResponse(next_path, status_code=303)
    auth.set_session_cookie(
        response,
        secret,
        ttl_s=platform.settings.ui.session_ttl_s,
        secure=auth.is_tls(request, platform),
    )
    response.delete_cookie(auth.LOGIN_COOKIE, path="/login")
    return response


@router.get("/logout")
def logout_form(request: Request, caller: MaybeCaller) -> Response:
    if caller is None:
        return RedirectResponse("/login", status_code=303)
    return render(request, "logout.html", caller)


@router.post("/logout")
def logout(
    request: Request, platform: PlatformDep, form: auth.Form, caller: auth.Caller
) -> Response:
    secret = request.cookies.get(auth.COOKIE, "")
    with platform.unit(
        caller.actor, "ui.logout", f"user:{caller.user_name}", client=client_address(request)
    ) as u:
        auth.close_session(u.session, secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        auth.COOKIE,
        path="/",
        secure=auth.is_tls(request, platform),
        httponly=True,
        samesite="strict",
    )
    return response

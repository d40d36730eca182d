"""API tokens (created, listed, revoked by their owner or an admin) and password login."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from underlay import identity
from underlay.api.deps import Ctx, PlatformDep, client_address
from underlay.config import SecuritySettings
from underlay.errors import Unauthenticated
from underlay.identity import Action, authorize
from underlay.schemas import LoginRequest, TokenCreate, TokenCreated, TokenRead
from underlay.store import Scope

router = APIRouter(tags=["tokens"])


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, ctx: Ctx) -> TokenCreated:
    owner = body.user or ctx.actor.name
    with ctx.unit("token.create", f"user:{owner}/token:{body.name}") as u:
        authorize(ctx.actor, Action.account)
        if owner != ctx.actor.name:
            authorize(ctx.actor, Action.admin)
        user = identity.read_user(u.session, owner)
        token, secret = identity.create_token(
            u.session, user, body.name, expires_in_days=body.expires_in_days
        )
        u.detail = {"token_id": token.id, "prefix": token.prefix}
        return TokenCreated.model_validate(
            {**TokenRead.model_validate(token).model_dump(), "token": secret}
        )


@router.get("/tokens", response_model=list[TokenRead])
def list_tokens(ctx: Ctx) -> list[TokenRead]:
    with ctx.unit("token.list", f"user:{ctx.actor.name}", audited=False) as u:
        authorize(ctx.actor, Action.account)
        return [
            TokenRead.model_validate(t) for t in identity.list_tokens(u.session, ctx.actor.user_id)
        ]


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], ctx: Ctx) -> Response:
    with ctx.unit("token.revoke", f"token:{token_id}") as u:
        authorize(ctx.actor, Action.account)
        identity.revoke_token(u.session, ctx.actor, token_id)
    return Response(status_code=204)


def login_limits(security: SecuritySettings) -> identity.LoginLimits:
    return identity.LoginLimits(
        max_failures=security.login_max_failures,
        window_s=security.login_window_s,
        backoff_s=security.login_backoff_s,
        backoff_max_s=security.login_backoff_max_s,
        max_failures_per_address=security.login_max_failures_per_address,
    )


@router.post("/auth/login", response_model=TokenCreated, status_code=201, tags=["auth"])
def login(body: LoginRequest, request: Request, platform: PlatformDep) -> TokenCreated:
    """Exchange a user name and password for a new API token (rate-limited on failures)."""
    address = client_address(request)
    security = platform.settings.security
    actor = identity.SYSTEM
    resource = f"user:{body.user[:64]}"
    with platform.unit(actor, "auth.login", resource, client=address, audited=False) as u:
        identity.check_login_allowed(u.session, body.user, address, login_limits(security))
    try:
        with platform.unit(actor, "auth.login", resource, client=address) as u:
            user = identity.verify_login(u.session, body.user, body.password, address)
            token, secret = identity.create_token(
                u.session,
                user,
                "login",
                expires_in_days=platform.settings.server.token_ttl_days,
            )
            return TokenCreated.model_validate(
                {**TokenRead.model_validate(token).model_dump(), "token": secret}
            )
    except Unauthenticated:
        with platform.db.session(Scope.everything()) as session:
            identity.record_login_failure(session, body.user, address)
        raise

"""Users: global admins manage them; everyone may read themselves."""

from __future__ import annotations

from fastapi import APIRouter

from underlay import identity
from underlay.api.deps import Ctx
from underlay.identity import Action, authorize
from underlay.schemas import (
    GrantName,
    Me,
    PasswordChange,
    PasswordReset,
    UserCreate,
    UserRead,
    UserUpdate,
)
from underlay.store.models import Project

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=Me)
def read_me(ctx: Ctx) -> Me:
    with ctx.unit("user.read", f"user:{ctx.actor.name}", audited=False) as u:
        user = identity.read_user(u.session, ctx.actor.name)
        names = {
            p.id: p.name
            for p in u.session.query(Project).filter(Project.id.in_(list(ctx.actor.roles)))
        }
        roles = {names[pid]: str(role) for pid, role in ctx.actor.roles.items() if pid in names}
        return Me.model_validate({**UserRead.model_validate(user).model_dump(), "projects": roles})


@router.post("/me/password", response_model=UserRead)
def change_password(body: PasswordChange, ctx: Ctx) -> UserRead:
    """Change your own password (the current one is checked); your other tokens are revoked,
    the one making this call stays valid."""
    with ctx.unit("user.password", f"user:{ctx.actor.name}") as u:
        authorize(ctx.actor, Action.account)
        user = identity.change_password(u.session, ctx.actor, body.old_password, body.new_password)
        return UserRead.model_validate(user)


@router.post("/{name}/password", response_model=UserRead)
def reset_password(name: str, body: PasswordReset, ctx: Ctx) -> UserRead:
    """A global admin sets a user's password; all of that user's tokens are revoked."""
    with ctx.unit("user.password_reset", f"user:{name}") as u:
        authorize(ctx.actor, Action.admin)
        user = identity.reset_password(u.session, name, body.new_password)
        return UserRead.model_validate(user)


@router.post("", response_model=UserRead, status_code=201)
def create_user(body: UserCreate, ctx: Ctx) -> UserRead:
    with ctx.unit("user.create", f"user:{body.name}") as u:
        authorize(ctx.actor, Action.admin)
        user = identity.create_user(
            u.session, body.name, password=body.password, email=body.email, is_admin=body.is_admin
        )
        return UserRead.model_validate(user)


@router.get("", response_model=list[UserRead])
def list_users(ctx: Ctx) -> list[UserRead]:
    with ctx.unit("user.list", "users", audited=False) as u:
        authorize(ctx.actor, Action.admin)
        return [UserRead.model_validate(x) for x in identity.list_users(u.session)]


@router.get("/{name}", response_model=UserRead)
def read_user(name: str, ctx: Ctx) -> UserRead:
    with ctx.unit("user.read", f"user:{name}", audited=False) as u:
        if name != ctx.actor.name:
            authorize(ctx.actor, Action.admin)
        return UserRead.model_validate(identity.read_user(u.session, name))


@router.patch("/{name}", response_model=UserRead)
def update_user(name: str, body: UserUpdate, ctx: Ctx) -> UserRead:
    with ctx.unit("user.update", f"user:{name}") as u:
        authorize(ctx.actor, Action.account)
        if name != ctx.actor.name or body.is_admin is not None or body.is_active is not None:
            authorize(ctx.actor, Action.admin)
        user = identity.update_user(
            u.session,
            name,
            password=body.password,
            is_active=body.is_active,
            is_admin=body.is_admin,
        )
        u.detail = body.model_dump(exclude={"password"}, exclude_none=True)
        return UserRead.model_validate(user)


@router.put("/{name}/grants/{grant}", response_model=UserRead)
def add_grant(name: str, grant: GrantName, ctx: Ctx) -> UserRead:
    """Give a user a platform-wide grant (``project-creator``); global admins only."""
    with ctx.unit("user.grant", f"user:{name}/grant:{grant}") as u:
        authorize(ctx.actor, Action.admin)
        return UserRead.model_validate(identity.add_grant(u.session, name, grant))


@router.delete("/{name}/grants/{grant}", response_model=UserRead)
def remove_grant(name: str, grant: GrantName, ctx: Ctx) -> UserRead:
    """Take a grant back; global admins only."""
    with ctx.unit("user.revoke", f"user:{name}/grant:{grant}") as u:
        authorize(ctx.actor, Action.admin)
        return UserRead.model_validate(identity.remove_grant(u.session, name, grant))

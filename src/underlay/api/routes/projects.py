"""Projects (tenants) and their memberships."""

from __future__ import annotations

from fastapi import APIRouter, Response

from underlay import identity
from underlay.api.deps import Ctx
from underlay.identity import Action
from underlay.schemas import MemberCreate, MemberRead, MemberUpdate, ProjectCreate, ProjectRead
from underlay.store.models import Role

router = APIRouter(prefix="/projects", tags=["projects"])


@router.post("", response_model=ProjectRead, status_code=201)
def create_project(body: ProjectCreate, ctx: Ctx) -> ProjectRead:
    """Create a project; the caller becomes its admin. Who may is ``security.project_creation``
    (default: global admins and users granted ``project-creator``)."""
    with ctx.unit("project.create", f"project:{body.name}", project=body.name) as u:
        policy = ctx.platform.settings.security.project_creation
        project = identity.create_project(
            u.session, body.name, ctx.actor, body.description, policy=policy
        )
        return ProjectRead.model_validate(project)


@router.get("", response_model=list[ProjectRead])
def list_projects(ctx: Ctx) -> list[ProjectRead]:
    with ctx.unit("project.list", "projects", audited=False) as u:
        return [ProjectRead.model_validate(p) for p in identity.list_projects(u.session, ctx.actor)]


@router.get("/{project}", response_model=ProjectRead)
def read_project(project: str, ctx: Ctx) -> ProjectRead:
    with ctx.unit("project.read", f"project:{project}", project=project, audited=False) as u:
        return ProjectRead.model_validate(identity.read_project(u.session, project, ctx.actor))


@router.delete("/{project}", status_code=204)
def delete_project(project: str, ctx: Ctx) -> Response:
    with ctx.unit("project.delete", f"project:{project}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.manage)
        ctx.platform.delete_project(u.session, found)
    return Response(status_code=204)


def _member(membership: object, user: object) -> MemberRead:
    return MemberRead.model_validate(
        {"user": user.name, "role": membership.role, "created_at": membership.created_at}  # type: ignore[attr-defined]
    )


@router.get("/{project}/members", response_model=list[MemberRead])
def list_members(project: str, ctx: Ctx) -> list[MemberRead]:
    with ctx.unit("member.list", f"project:{project}", project=project, audited=False) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        return [_member(m, usr) for m, usr in identity.list_members(u.session, found)]


@router.post("/{project}/members", response_model=MemberRead, status_code=201)
def add_member(project: str, body: MemberCreate, ctx: Ctx) -> MemberRead:
    resource = f"project:{project}/member:{body.user}"
    with ctx.unit("member.create", resource, project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.manage)
        membership = identity.add_member(u.session, found, body.user, Role(body.role))
        u.detail = {"role": body.role}
        return _member(membership, identity.read_user(u.session, body.user))


@router.patch("/{project}/members/{user}", response_model=MemberRead)
def update_member(project: str, user: str, body: MemberUpdate, ctx: Ctx) -> MemberRead:
    with ctx.unit("member.update", f"project:{project}/member:{user}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.manage)
        membership = identity.update_member(u.session, found, user, Role(body.role))
        u.detail = {"role": body.role}
        return _member(membership, identity.read_user(u.session, user))


@router.delete("/{project}/members/{user}", status_code=204)
def remove_member(project: str, user: str, ctx: Ctx) -> Response:
    with ctx.unit("member.delete", f"project:{project}/member:{user}", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor, Action.manage)
        identity.remove_member(u.session, found, user)
    return Response(status_code=204)

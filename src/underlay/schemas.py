"""Request and response shapes of the kernel's resources, shared by the API and the SDK.

Only pydantic here: the client imports this module, so it must stay light.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_-]{0,62}$")
RoleName = Literal["viewer", "member", "admin"]
GrantName = Literal["project-creator"]

# Every string a request carries is one of these (or a stricter pattern): the database must
# never see NUL (PostgreSQL refuses it in text), and one-line values (names, e-mail
# addresses, reasons) hold no control characters at all.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]
Line = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]


class _In(BaseModel):
    """A request body: unknown fields refused; strict types (``false`` is no number, ``1``
    no boolean, ``"3"`` no integer)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Health(_Out):
    status: str
    version: str
    checks: dict[str, str] = {}


class UserCreate(_In):
    name: str = Name
    password: Text | None = Field(default=None, min_length=8, max_length=1024)
    email: Line | None = Field(default=None, max_length=254)
    is_admin: bool = False


class UserUpdate(_In):
    password: Text | None = Field(default=None, min_length=8, max_length=1024)
    is_active: bool | None = None
    is_admin: bool | None = None


class PasswordChange(_In):
    """Change one's own password: the current one proves it is you."""

    old_password: Text = Field(max_length=1024)
    new_password: Text = Field(min_length=8, max_length=1024)


class PasswordReset(_In):
    """A global admin sets another user's password."""

    new_password: Text = Field(min_length=8, max_length=1024)


class UserRead(_Out):
    id: int
    name: str
    email: str | None
    is_admin: bool
    is_active: bool
    created_at: dt.datetime
    grants: list[GrantName] = Field(
        default=[], description="Platform-wide grants a global admin gave."
    )


class Me(UserRead):
    projects: dict[str, RoleName] = {}


class ProjectCreate(_In):
    name: str = Name
    description: Text = Field(default="", max_length=1000)


class ProjectRead(_Out):
    id: int
    name: str
    description: str
    created_at: dt.datetime


class MemberCreate(_In):
    user: str = Name
    role: RoleName = "member"


class MemberUpdate(_In):
    role: RoleName


class MemberRead(_Out):
    user: str
    role: RoleName
    created_at: dt.datetime


class TokenCreate(_In):
    name: str = Name
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    user: str | None = Field(default=None, description="Admins only: create for this user.")


class TokenRead(_Out):
    id: int
    name: str
    prefix: str
    kind: str = "user"
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The secret. Shown once; store it now.")


class LoginRequest(_In):
    user: Line = Field(min_length=1, max_length=64)
    password: Text = Field(min_length=1, max_length=1024)


class BlobRead(_Out):
    digest: str
    size: int
    name: str
    media_type: str
    created_at: dt.datetime


class AuditEntryRead(_Out):
    seq: int
    at: dt.datetime
    actor: str
    action: str
    resource: str
    project: str | None
    client: str
    outcome: str
    detail: str
    hash: str


class AuditReportRead(_Out):
    ok: bool
    entries_checked: int
    checkpoints_checked: int
    head_seq: int
    first_bad_seq: int | None
    problem: str | None


class ObjectRefModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")


class LineageEdgeCreate(_In):
    src: ObjectRefModel
    relation: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]{0,31}$")
    dst: ObjectRefModel


class LineageEdgeRead(BaseModel):
    src: ObjectRefModel
    relation: str
    dst: ObjectRefModel


class LineageNode(ObjectRefModel):
    distance: int = Field(description="Hops from the root: negative upstream, positive downstream.")


class LineageGraphRead(BaseModel):
    root: ObjectRefModel
    nodes: list[LineageNode]
    edges: list[LineageEdgeRead]


class Problem(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NodeStatus(_Out):
    name: str
    status: str = Field(description="ready, cordoned or lost.")
    isolation: str = Field(description="How jobs are sandboxed on this node.")


class StatusRead(_Out):
    """Server facts for ``underlay status``; kinds only, never URLs or credentials."""

    version: str
    database: str = Field(description="sqlite or postgresql.")
    blob_store: str = Field(description="local, or the scheme of a remote store (s3, ...).")
    nodes: list[NodeStatus]
    queue: dict[str, int] = Field(
        description="Jobs queued, admitted and running in the projects the caller can see."
    )

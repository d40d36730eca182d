"""Kernel tables. Domain packages add their own tables to the same ``Base``.

Tables owned by a project carry :class:`ProjectScoped`; sessions filter them by the
caller's scope automatically (see :mod:`underlay.store.db`).

Identifiers are never reused: every table with a surrogate integer key takes
:data:`MONOTONIC` as (the last of) its table arguments. PostgreSQL's sequences never hand out
a number twice anyway; SQLite without ``AUTOINCREMENT`` hands out ``max(id) + 1``, which
reuses the id of the newest row once it is deleted (a deleted project's id, and with it
its blob folder, log files and alerts, would pass to the next project).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

from underlay.store.types import UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


MONOTONIC = {"sqlite_autoincrement": True}
"""Table arguments that make SQLite ids monotonic (``INTEGER PRIMARY KEY AUTOINCREMENT``)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime()}


class ProjectScoped:
    """Mixin for rows that belong to one project (tenant)."""

    @declared_attr
    def project_id(cls) -> Mapped[int]:  # noqa: N805 - SQLAlchemy passes the class
        return mapped_column(
            ForeignKey("projects.id", ondelete="CASCADE"), index=True, nullable=False
        )


class Role(StrEnum):
    viewer = "viewer"
    member = "member"
    admin = "admin"


class User(Base):
    __tablename__ = "users"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    grant_rows: Mapped[list[UserGrant]] = relationship(lazy="selectin", viewonly=True)

    @property
    def grants(self) -> list[str]:
        return sorted(g.name for g in self.grant_rows)


class UserGrant(Base):
    """A platform-wide permission a global admin gives one user (``project-creator``)."""

    __tablename__ = "user_grants"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Membership(ProjectScoped, Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "user_id"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column()
    revoked_at: Mapped[dt.datetime | None] = mapped_column()
    last_used_at: Mapped[dt.datetime | None] = mapped_column()
    kind: Mapped[str] = mapped_column(String(16), default="user")  # user | job | agent
    project_id: Mapped[int | None] = mapped_column(  # job tokens: their only project
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    node: Mapped[str | None] = mapped_column(String(128))  # agent tokens: their node


class LoginFailure(Base):
    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_user_at", "user_name", "at"),
        Index("ix_login_failures_address_at", "address", "at"),
        Index("ix_login_failures_user_address_at", "user_name", "address", "at"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class UiSession(Base):
    """A dashboard sign-in: only the SHA-256 of the cookie's secret is stored."""

    __tablename__ = "ui_sessions"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # signed in with an API token: the session ends when that token is revoked or expires
    token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class DataKey(Base):
    """A project's data key, wrapped (encrypted) by the master key."""

    __tablename__ = "data_keys"

    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[dt.datetime | None] = mapped_column()


class Blob(ProjectScoped, Base):
    __tablename__ = "blobs"
    __table_args__ = (UniqueConstraint("project_id", "digest"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(255), default="")
    media_type: Mapped[str] = mapped_column(String(127), default="application/octet-stream")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditHead(Base):
    """One row: the last sequence number and hash. Appends lock it to serialise the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    __table_args__ = MONOTONIC

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    at: Mapped[dt.datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource: Mapped[str] = mapped_column(String(512))
    project: Mapped[str | None] = mapped_column(String(64), index=True)
    client: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column()


class LineageEdge(ProjectScoped, Base):
    """A typed edge ``src --relation--> dst`` between two objects of one project."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint("project_id", "src_kind", "src_id", "relation", "dst_kind", "dst_id"),
        Index("ix_lineage_src", "project_id", "src_kind", "src_id"),
        Index("ix_lineage_dst", "project_id", "dst_kind", "dst_id"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    src_kind: Mapped[str] = mapped_column(String(32))
    src_id: Mapped[str] = mapped_column(String(128))
    relation: Mapped[str] = mapped_column(String(32))
    dst_kind: Mapped[str] = mapped_column(String(32))
    dst_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

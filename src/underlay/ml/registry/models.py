"""Tables of the model registry.

A version's files are rows that name a blob of the same project by digest (a composite foreign
key onto ``blobs``, as dataset files do), so a blob a version holds cannot be deleted from under
it. The version row keeps the exact manifest bytes it was signed over and the signature, so
verification never re-serialises anything. Alias moves are append-only events: the current
holder is a row of ``model_aliases``, the history is ``model_alias_events``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class RegisteredModel(ProjectScoped, Base):
    """A named model of a project, with the card fields its owners set."""

    __tablename__ = "registered_models"
    __table_args__ = (UniqueConstraint("project_id", "name"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(1000), default="")
    intended_use: Mapped[str] = mapped_column(Text, default="")
    limitations: Mapped[str] = mapped_column(Text, default="")
    license: Mapped[str] = mapped_column(String(255), default="")
    data_license: Mapped[str] = mapped_column(String(255), default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelVersion(ProjectScoped, Base):
    """One immutable, signed version: its number counts up from 1 within its model."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(  # the run outlives nothing it made
        ForeignKey("runs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    artifact_path: Mapped[str] = mapped_column(String(1024), default="")
    flavor: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text, default="{}")  # input/output JSON
    description: Mapped[str] = mapped_column(String(1000), default="")
    file_count: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    manifest_signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_id: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelVersionFile(ProjectScoped, Base):
    """A file of a version: its path under the version's root and the blob of its bytes."""

    __tablename__ = "model_version_files"
    __table_args__ = (
        ForeignKeyConstraint(["project_id", "digest"], ["blobs.project_id", "blobs.digest"]),
        Index("ix_model_version_files_project_digest", "project_id", "digest"),
    )

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)


class ModelAlias(ProjectScoped, Base):
    """Which version an alias (``champion``) names now."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias"), MONOTONIC)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    alias: Mapped[str] = mapped_column(String(63))
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelAliasEvent(ProjectScoped, Base):
    """One move of an alias: to ``version`` (None: removed), by whom, when and why."""

    __tablename__ = "model_alias_events"
    __table_args__ = (
        Index("ix_model_alias_events_model_alias_at", "model_id", "alias", "at"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(
        ForeignKey("registered_models.id", ondelete="CASCADE"), index=True
    )
    alias: Mapped[str] = mapped_column(String(63))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(1000))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)

"""The kernel assembled: one :class:`Platform` per process, built from :class:`Settings`.

Faces (API, CLI, demo) build a Platform and run every operation through :meth:`Platform.unit`,
which opens a tenant-scoped transaction for the actor and appends the audit entry in that same
transaction, so a mutation and its audit record commit together or not at all. A failed or
refused operation is rolled back and then audited on its own (outcome ``denied`` or
``error``), so refusals leave a trace too.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from underlay import identity
from underlay.audit import AuditLog
from underlay.audit_checkpoints import CheckpointLocation, FileLocation, ObjectLocation
from underlay.blobs import BlobStore
from underlay.config import Settings, ensure_home, write_secret_file
from underlay.crypto import Keyring, SigningKey
from underlay.data import parts, staging
from underlay.errors import (
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    UnderlayError,
)
from underlay.identity import SYSTEM, Actor, bootstrap_admin
from underlay.store import Database, Scope
from underlay.store.models import Project


@dataclass
class Unit:
    """One operation in progress: its session and what its audit entry will say."""

    session: Session
    actor: Actor
    action: str
    resource: str
    project: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def audit_text(value: str, max_len: int = 64) -> str:
    """A value from a request made fit for the audit log, whatever it holds: control
    characters and backslashes escaped (``\\x00``), empty shown as ``""``, cut to ``max_len``.
    A refusal must never fail to be audited because of what the refused caller sent."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value) or '""'
    return text if len(text) <= max_len else text[: max_len - 1] + "\u2026"


def _outcome(exc: UnderlayError) -> str:
    refused = isinstance(exc, Unauthenticated | PermissionDenied | RateLimited)
    if refused or (isinstance(exc, NotFound) and exc.extra.get("denied")):
        return "denied"
    return "error"


def checkpoint_locations(settings: Settings) -> list[CheckpointLocation]:
    """Where signed audit checkpoints are written besides the database."""
    security = settings.security
    locations: list[CheckpointLocation] = [FileLocation(settings.audit_checkpoint_path)]
    if security.audit_checkpoint_url:
        locations.append(
            ObjectLocation(
                security.audit_checkpoint_url, dict(security.audit_checkpoint_storage_options)
            )
        )
    return locations


class Platform:
    """Settings, metadata store, keys, blob store and audit log of one process."""

    def __init__(self, settings: Settings) -> None:
        # A server process creates nothing others may read: the database and its journal,
        # logs, blobs, the agent's folders (jobs get their own folder handed over explicitly).
        os.umask(0o077)
        ensure_home(settings)
        self.settings = settings
        self.db = Database(
            settings.database_url,
            busy_timeout_s=settings.store.busy_timeout_s,
            pool_size=settings.store.pool_size,
        )
        self.keyring = Keyring(settings)
        self.signer = SigningKey(settings)
        self.blobs = BlobStore(settings, self.keyring)
        self.audit = AuditLog(
            self.db,
            self.signer,
            checkpoint_every=settings.security.audit_checkpoint_every,
            external=checkpoint_locations(settings),
        )
        self.db.session_info["audit"] = self.audit  # alerts raised in any session are audited

        self.wakers: list[Callable[[], None]] = []
        # what each domain removes of a deleted project (the faces wire the domains in)
        self.project_purgers: list[Callable[[Session, Project], None]] = []

    @property
    def public_url(self) -> str:
        """How jobs and the local agent reach this server."""
        server = self.settings.server
        if server.public_url:
            return server.public_url
        host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host  # noqa: S104
        return f"{'https' if server.tls else 'http'}://{host}:{server.port}"

    def wake_scheduler(self) -> None:
        """Ask the scheduling loop (if one runs in this process) for a round now."""
        for wake in self.wakers:
            wake()

    def start(self) -> str | None:
        """Migrate, clear crashed writes, create the first admin; returns a new admin token,
        which is also written to ``admin.token`` (0600) in the home so it cannot scroll away."""
        self.db.migrate(lock_dir=self.settings.home)
        # locally, every partial no live write holds locked; remotely, only stale ones
        self.blobs.sweep_partials(older_than_s=0 if self.blobs.locks_partials else 3600)
        staging.sweep(self.settings.home)  # table uploads a killed process staged
        parts.sweep(self.settings.home)  # writes in parts idle for a day (their driver died)
        self.audit.export_checkpoints()  # catch up on writes that failed before a restart
        with self.db.session(Scope.everything()) as session:
            secret = bootstrap_admin(session, self.settings.admin_token)
            if secret is not None:  # on disk before the token commits: never a lost token
                path = self.settings.admin_token_path
                write_secret_file(path, f"{secret}\n".encode(), overwrite=True)
            if secret is not None or self.settings.admin_token:
                self.audit.append(
                    session,
                    actor=SYSTEM.name,
                    action="user.bootstrap",
                    resource="user:admin",
                    outcome="ok",
                )
        return secret

    def delete_project(self, session: Session, project: Project) -> None:
        """Delete a project and everything of it, in ``session``: each domain's rows first
        (compute stops its running attempts), then the kernel's (memberships, data key,
        blob rows, lineage edges go with the project row), then, once the transaction
        commits, its files. The data key is destroyed with the row, so any copy of the
        encrypted data left anywhere is unreadable."""
        for purge in self.project_purgers:
            purge(session, project)
        self.blobs.delete_project_files(session, project.id)
        identity.delete_project(session, project)

    def close(self) -> None:
        self.db.dispose()

    @contextlib.contextmanager
    def unit(
        self,
        actor: Actor,
        action: str,
        resource: str,
        *,
        project: str | None = None,
        client: str = "",
        audited: bool = True,
        scope: Scope | None = None,
    ) -> Iterator[Unit]:
        """A transaction for ``actor`` (in ``actor.scope`` unless a route that authorized the
        actor otherwise widens it); audited on success when ``audited``, always on failure
        (with what the unit's detail held by then, and the error)."""
        unit: Unit | None = None
        try:
            with self.db.session(scope or actor.scope) as session:
                unit = Unit(session, actor, action, resource, project)
                yield unit
                if audited:
                    self.audit.append(
                        session,
                        actor=actor.name,
                        action=action,
                        resource=unit.resource,
                        project=unit.project,
                        client=client,
                        outcome="ok",
                        detail=unit.detail or None,
                    )
        except UnderlayError as exc:
            self.audit.record(
                actor=actor.name,
                action=audit_text(action),
                resource=audit_text(resource, 512),
                project=None if project is None else audit_text(project),
                client=client,
                outcome=_outcome(exc),
                detail={**(unit.detail if unit else {}), "error": exc.message[:500]},
            )
            raise

    def record_denied(self, action: str, resource: str, client: str, exc: UnderlayError) -> None:
        """Audit a request refused before any actor was known (no or a bad token)."""
        self.audit.record(
            actor="anonymous",
            action=audit_text(action),
            resource=audit_text(resource, 512),
            client=client,
            outcome=_outcome(exc),
            detail={"error": exc.message[:500]},
        )

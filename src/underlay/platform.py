"""The kernel assembled: one :class:`Platform` per process, built from :class:`Settings`.

Faces (API, CLI, demo) build a Platform and run every operation through :meth:`Platform.unit`,
which opens a tenant-scoped transaction for the actor and appends the audit entry in that same
transaction, so a mutation and its audit record commit together or not at all. A failed or
refused operation is rolled back and then audited on its own (outcome ``denied`` or
``error``), so refusals leave a trace too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from underlay.audit import AuditLog
from underlay.blobs import BlobStore
from underlay.config import Settings, ensure_home
from underlay.crypto import Keyring, SigningKey
from underlay.errors import (
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    UnderlayError,
)
from underlay.identity import SYSTEM, Actor, bootstrap_admin
from underlay.store import Database, Scope


@dataclass
class Unit:
    """One operation in progress: its session and what its audit entry will say."""

    session: Session
    actor: Actor
    action: str
    resource: str
    project: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _outcome(exc: UnderlayError) -> str:
    refused = isinstance(exc, Unauthenticated | PermissionDenied | RateLimited)
    if refused or (isinstance(exc, NotFound) and exc.extra.get("denied")):
        return "denied"
    return "error"


class Platform:
    """Settings, metadata store, keys, blob store and audit log of one process."""

    def __init__(self, settings: Settings) -> None:
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
            self.db, self.signer, checkpoint_every=settings.security.audit_checkpoint_every
        )

        self.wakers: list[Callable[[], None]] = []

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
        """Migrate, clear crashed writes, create the first admin; returns a new admin token."""
        self.db.migrate(lock_dir=self.settings.home)
        # locally, every partial no live write holds locked; remotely, only stale ones
        self.blobs.sweep_partials(older_than_s=0 if self.blobs.locks_partials else 3600)
        with self.db.session(Scope.everything()) as session:
            secret = bootstrap_admin(session, self.settings.admin_token)
            if secret is not None or self.settings.admin_token:
                self.audit.append(
                    session,
                    actor=SYSTEM.name,
                    action="user.bootstrap",
                    resource="user:admin",
                    outcome="ok",
                )
        return secret

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
    ) -> Iterator[Unit]:
        """A transaction for ``actor``; audited on success when ``audited``, always on failure."""
        try:
            with self.db.session(actor.scope) as session:
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
                action=action,
                resource=resource,
                project=project,
                client=client,
                outcome=_outcome(exc),
                detail={"error": exc.message[:500]},
            )
            raise

    def record_denied(self, action: str, resource: str, client: str, exc: UnderlayError) -> None:
        """Audit a request refused before any actor was known (no or a bad token)."""
        self.audit.record(
            actor="anonymous",
            action=action,
            resource=resource,
            client=client,
            outcome=_outcome(exc),
            detail={"error": exc.message[:500]},
        )

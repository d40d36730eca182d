"""Aliases of registered models (``champion``, ``challenger``) and the history of their moves.

An alias names one version. Every move appends an event (who, when, why, from which version)
in the transaction that moves it, so :func:`alias_history` answers which version an alias
named at any moment: the newest event at or before it. Removing an alias is a move to none.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.errors import InvalidInput, NotFound
from underlay.ml.registry.models import ModelAlias, ModelAliasEvent, ModelVersion
from underlay.ml.registry.service import get_model, get_version
from underlay.store.types import utcnow

ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
RESERVED_ALIASES = {"latest"}


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or alias in RESERVED_ALIASES:
        raise InvalidInput(
            f"alias {alias[:80]!r} must be 1-63 characters: a lowercase letter, then lowercase "
            "letters, digits, '-' or '_' ('latest' is reserved)"
        )
    return alias


def set_alias(
    session: Session,
    project_id: int,
    name: str,
    alias: str,
    version: int,
    *,
    actor: str,
    reason: str,
) -> ModelAliasEvent:
    """Point ``alias`` at ``version`` and record the move."""
    check_alias(alias)
    reason = _check_reason(reason)
    model = get_model(session, project_id, name, lock=True)
    target = get_version(session, project_id, name, version)
    current = session.scalar(
        select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    previous = None
    now = utcnow()
    if current is None:
        session.add(
            ModelAlias(
                project_id=project_id,
                model_id=model.id,
                alias=alias,
                version_id=target.id,
                updated_at=now,
            )
        )
    else:
        held = session.get(ModelVersion, current.version_id)
        previous = held.version if held else None
        current.version_id = target.id
        current.updated_at = now
    event = ModelAliasEvent(
        project_id=project_id,
        model_id=model.id,
        alias=alias,
        version=target.version,
        previous_version=previous,
        actor=actor,
        reason=reason,
        at=now,
    )
    session.add(event)
    session.flush()
    return event


def remove_alias(
    session: Session, project_id: int, name: str, alias: str, *, actor: str, reason: str
) -> ModelAliasEvent:
    reason = _check_reason(reason)
    model = get_model(session, project_id, name, lock=True)
    current = session.scalar(
        select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
    )
    if current is None:
        raise NotFound(f"model {name!r} has no alias {alias[:63]!r}")
    held = session.get(ModelVersion, current.version_id)
    event = ModelAliasEvent(
        project_id=project_id,
        model_id=model.id,
        alias=alias,
        version=None,
        previous_version=held.version if held else None,
        actor=actor,
        reason=reason,
        at=utcnow(),
    )
    session.delete(current)
    session.add(event)
    session.flush()
    return event


def alias_history(
    session: Session,
    project_id: int,
    name: str,
    *,
    alias: str | None = None,
    at: dt.datetime | None = None,
) -> tuple[list[ModelAliasEvent], dict[str, int | None]]:
    """The alias moves (oldest first; up to ``at`` when given, of ``alias`` when given) and
    which version each alias named at ``at`` (now when None; None: it named none)."""
    model = get_model(session, project_id, name)
    query = select(ModelAliasEvent).where(ModelAliasEvent.model_id == model.id)
    if alias is not None:
        query = query.where(ModelAliasEvent.alias == alias)
    if at is not None:
        if at.tzinfo is None:
            raise InvalidInput("the moment of an alias query needs a timezone (or Z for UTC)")
        query = query.where(ModelAliasEvent.at <= at)
    events = list(session.scalars(query.order_by(ModelAliasEvent.at, ModelAliasEvent.id)))
    held: dict[str, int | None] = {}
    if alias is not None:
        held[alias] = None
    for event in events:
        held[event.alias] = event.version
    return events, held


def _check_reason(reason: str) -> str:
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason or len(reason) > 1000:
        raise InvalidInput("an alias move needs a reason of 1 to 1000 characters (--reason)")
    return reason

"""What ``GET /api/v1/status`` (``underlay status``) reports: server facts without secrets.

The database and blob store are named by kind only (``sqlite``, ``postgresql``; ``local``,
``s3``), never by URL, which may hold credentials. Queue counts come through the caller's
session, so a user counts only the jobs of projects they belong to (an admin: all).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from underlay import __version__
from underlay.compute.models import Job
from underlay.compute.nodes import list_nodes
from underlay.config import Settings
from underlay.schemas import NodeStatus, StatusRead

QUEUE_STATES = ("queued", "admitted", "running")


def _kind(url: str, local: str) -> str:
    """The scheme of ``url`` without driver or credentials (``postgresql+psycopg`` →
    ``postgresql``); ``local`` for a plain path."""
    if "://" not in url:
        return local
    return url.split("://", 1)[0].split("+", 1)[0]


def read_status(session: Session, settings: Settings) -> StatusRead:
    """The status seen through ``session`` (scoped to the caller's projects)."""
    rows = session.execute(
        select(Job.state, func.count()).where(Job.state.in_(QUEUE_STATES)).group_by(Job.state)
    )
    queue = dict.fromkeys(QUEUE_STATES, 0) | {state: count for state, count in rows}
    nodes = [
        NodeStatus(name=n.name, status=n.status, isolation=n.isolation or "none")
        for n, _ in list_nodes(session)
    ]
    return StatusRead(
        version=__version__,
        database=_kind(settings.database_url, "sqlite"),
        blob_store=_kind(settings.blob_url, "local"),
        nodes=nodes,
        queue=queue,
    )

"""Data subjects: every row about one subject, in every version of every table of a project
that declares a subject key (see underlay.data.subjects). The value travels in the body, not
the URL, so it stays out of access logs; the audit records the lookup, not the value."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from underlay import identity
from underlay.api.deps import Ctx
from underlay.api.routes.tables import Tables
from underlay.data import subjects
from underlay.data.privacy import PII_KEY_PURPOSE
from underlay.data.schemas import SubjectQuery, SubjectRead, SubjectTableRead

router = APIRouter(prefix="/projects/{project}", tags=["tables"])


@router.post("/subjects", response_model=SubjectRead)
def find_subject(project: str, body: SubjectQuery, ctx: Ctx, store: Tables) -> SubjectRead:
    """The tables, versions and rows that hold the subject whose key is ``value`` (raw: a
    tokenised key column is matched by the token the project's key gives the value)."""
    with ctx.unit("table.subject", f"project:{project}/subjects", project=project) as u:
        found = identity.read_project(u.session, project, ctx.actor)
        key = ctx.platform.keyring.derived_key(u.session, found.id, PII_KEY_PURPOSE)

        def dataset(table: Any, version: int) -> Any:
            return store.dataset(table, version)

        hits = subjects.lookup(u.session, found.id, body.value, key, dataset)
        u.detail = {"tables": {h.table: [v.version for v in h.versions] for h in hits}}
        return SubjectRead(
            tables=[SubjectTableRead.model_validate(h, from_attributes=True) for h in hits]
        )

"""Per-project guaranteed quotas of each accelerator type (what the policy borrows against)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.compute.models import QuotaRow
from underlay.errors import InvalidInput
from underlay.store.models import Project

_TYPE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def set_quota(
    session: Session,
    project: Project,
    accelerator_type: str,
    guaranteed: int,
    borrow_limit: int | None,
) -> QuotaRow:
    if not _TYPE.fullmatch(accelerator_type):
        raise InvalidInput(f"accelerator type {accelerator_type[:70]!r} is not a valid name")
    row = session.scalar(
        select(QuotaRow).where(
            QuotaRow.project_id == project.id, QuotaRow.accelerator_type == accelerator_type
        )
    )
    if row is None:
        row = QuotaRow(
            project_id=project.id, accelerator_type=accelerator_type, guaranteed=guaranteed
        )
        session.add(row)
    row.guaranteed, row.borrow_limit = guaranteed, borrow_limit
    session.flush()
    return row


def list_quotas(session: Session, project: Project) -> list[QuotaRow]:
    return list(
        session.scalars(
            select(QuotaRow)
            .where(QuotaRow.project_id == project.id)
            .order_by(QuotaRow.accelerator_type)
        )
    )

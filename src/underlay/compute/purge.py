"""What deleting a project removes from the compute domain, and in what order.

Rows go in the caller's transaction; the log files after it commits, so a rolled-back delete
loses nothing. Order: the project's attempts first (running ones drop out of their node's
work list, so the agent stops their processes; see :mod:`underlay.compute.agent`), with the
job-scoped tokens they hold revoked (attempts are also the usage ledger); then alerts, jobs,
quotas and budgets.

Rows are removed, not tombstoned: ids are never reused (:data:`underlay.store.models.
MONOTONIC`), so a removed job's id can never name another job, and keeping a deleted
tenant's usage or output would keep data the tenant asked to be rid of. The audit log keeps
the record of what ran and who deleted it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.orm import Session

from underlay.compute import logs
from underlay.compute.models import Alert, Budget, Job, JobAttempt, QuotaRow
from underlay.store.models import ApiToken, Project
from underlay.store.types import utcnow


def purge_project(session: Session, project: Project, home: Path) -> None:
    """Remove every compute row of ``project`` now and its job logs once the caller commits."""
    pid = project.id
    job_ids = list(session.scalars(select(Job.id).where(Job.project_id == pid)))
    attempts = session.execute(
        select(JobAttempt.job_id, JobAttempt.number).where(JobAttempt.project_id == pid)
    ).all()
    tokens = [f"job-{job_id}-{number}" for job_id, number in attempts]
    for start in range(0, len(tokens), 500):
        session.execute(
            update(ApiToken)
            .where(ApiToken.name.in_(tokens[start : start + 500]), ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    session.execute(delete(JobAttempt).where(JobAttempt.project_id == pid))
    of_its_jobs = Alert.job_id.in_(select(Job.id).where(Job.project_id == pid))
    session.execute(delete(Alert).where(or_(Alert.project_id == pid, of_its_jobs)))
    session.execute(delete(Job).where(Job.project_id == pid))
    session.execute(delete(QuotaRow).where(QuotaRow.project_id == pid))
    session.execute(delete(Budget).where(Budget.project_id == pid))

    def remove_logs(_session: Any) -> None:
        for job_id in job_ids:
            logs.remove(home, job_id)

    event.listen(session, "after_commit", remove_logs, once=True)

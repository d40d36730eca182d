"""Tables of the monitoring domain: the stored drift reports of deployments.

A report row is written once per stored drift check and never changed: what was compared
(the deployment, the reference table version, the window of its prediction log), the outcome
(``ok``, ``drift`` or ``too_few_rows``, the flagged columns) and the whole report as JSON,
for the API, the CLI and charts. Rows go with their project.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from underlay.store.models import MONOTONIC, Base, ProjectScoped
from underlay.store.types import utcnow


class DriftReportRow(ProjectScoped, Base):
    """One stored drift check of a deployment's prediction log against its reference."""

    __tablename__ = "drift_reports"
    __table_args__ = (
        Index("ix_drift_reports_deployment", "project_id", "deployment", "id"),
        MONOTONIC,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment: Mapped[str] = mapped_column(String(63))
    reference: Mapped[str] = mapped_column(String(200))  # table@version
    window: Mapped[str] = mapped_column(Text, default="{}")  # JSON: rows | since, until, last
    rows: Mapped[int] = mapped_column(Integer)  # rows of the log in the window
    state: Mapped[str] = mapped_column(String(16))  # ok | drift | too_few_rows
    flagged: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of column names
    report: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the whole check
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64), default="")

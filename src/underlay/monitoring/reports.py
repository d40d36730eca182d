"""Views over stored drift reports and serving counters: the drift series of ``/metrics``
and the serving figures that go with a deployment's performance.

* ``underlay_drift_score{project,deployment,feature}``: each scored column's score in the
  deployment's latest stored report that has scores (a ``too_few_rows`` report has none, so
  the last scores stay shown until a check scores again);
* ``underlay_drift_checks_total{project,deployment,state}``: stored checks by state
  (``ok``, ``drift``, ``too_few_rows``), counted from the reports table at scrape time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from underlay.monitoring.models import DriftReportRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

STATES = ("ok", "drift", "too_few_rows")


def drift_families(session: Session, names: dict[int, str]) -> list[Metric]:
    """The drift series of the projects ``names`` (id to name)."""
    score = GaugeMetricFamily(
        "underlay_drift_score",
        "Drift score of each column in the deployment's latest scored drift report.",
        labels=("project", "deployment", "feature"),
    )
    checks = CounterMetricFamily(
        "underlay_drift_checks",
        "Stored drift checks, by project, deployment and state.",
        labels=("project", "deployment", "state"),
    )
    if not names:
        return [score, checks]
    ids = sorted(names)
    counts: dict[tuple[int, str], dict[str, int]] = {}
    query = (
        select(
            DriftReportRow.project_id, DriftReportRow.deployment, DriftReportRow.state, func.count()
        )
        .where(DriftReportRow.project_id.in_(ids))
        .group_by(DriftReportRow.project_id, DriftReportRow.deployment, DriftReportRow.state)
    )
    for pid, deployment, state, n in session.execute(query):
        counts.setdefault((pid, deployment), {})[state] = n
    for (pid, deployment), by_state in sorted(
        counts.items(), key=lambda i: (names[i[0][0]], i[0][1])
    ):
        for state in STATES:
            checks.add_metric((names[pid], deployment, state), by_state.get(state, 0))
    latest = (
        select(func.max(DriftReportRow.id))
        .where(DriftReportRow.project_id.in_(ids), DriftReportRow.state != "too_few_rows")
        .group_by(DriftReportRow.project_id, DriftReportRow.deployment)
    )
    rows = session.scalars(
        select(DriftReportRow).where(DriftReportRow.id.in_(latest)).order_by(DriftReportRow.id)
    )
    for row in rows:
        for feature in json.loads(row.report or "{}").get("features", []):
            if feature.get("score") is not None:
                labels = (names[row.project_id], row.deployment, str(feature.get("name")))
                score.add_metric(labels, float(feature["score"]))
    return [score, checks]


def serving_figures(counters: dict[str, Any]) -> dict[str, Any]:
    """Requests, errors, the error rate and latency from a deployment's serving counters
    (:meth:`underlay.serving.stats.DeploymentStats.snapshot`); the rate is None without
    requests."""
    requests = int(counters.get("requests") or 0)
    errors = int(counters.get("errors") or 0)
    return {
        "requests": requests,
        "errors": errors,
        "server_errors": int(counters.get("server_errors") or 0),
        "error_rate": errors / requests if requests else None,
        "latency_ms": counters.get("latency_ms") or {},
    }

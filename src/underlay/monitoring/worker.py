"""The alert worker: a daemon thread of the server that posts webhook deliveries as they fall
due and, every ``alerts.anomaly_interval_s``, scans the platform: budgets against ``cost``
rules (and the built-in budget alert), refused requests against ``security`` rules, serving's
counters against ``latency`` and ``errors`` rules, and the anomaly figures
(:mod:`underlay.monitoring.anomalies`).

Every server process runs one; deliveries are claimed row by row, so several never post the
same one (:mod:`underlay.monitoring.webhooks`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from underlay.compute import budgets
from underlay.compute.alerts import resolve_alert
from underlay.compute.models import Budget
from underlay.config import Settings
from underlay.crypto import Keyring
from underlay.monitoring import anomalies, webhooks
from underlay.monitoring.alerts import raise_alert
from underlay.monitoring.rules import evaluate_rules, has_rules
from underlay.store import Database, Scope
from underlay.store.models import AuditEntry, Project
from underlay.store.types import utcnow

log = logging.getLogger(__name__)

ServingFigures = Callable[[], list[tuple[str, str, dict[str, Any]]]]


@dataclass(frozen=True)
class ServingProbes:
    """Serving's in-process counters (per deployment), for the latency/errors/security rules."""

    figures: ServingFigures | None = None
    rate_limited: Callable[[], Mapping[tuple[int, str], int]] | None = None


@dataclass
class ScanState:
    since: dt.datetime | None = None
    process: anomalies.ProcessFigures = field(default_factory=anomalies.ProcessFigures)
    last_serving: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    last_limited: dict[tuple[int, str], int] = field(default_factory=dict)


def scan(
    db: Database,
    settings: Settings,
    state: ScanState,
    probes: anomalies.Probes = anomalies.Probes(),
    serving: ServingProbes = ServingProbes(),
    now: dt.datetime | None = None,
) -> None:
    """One scan of the platform (each part in its own transaction, so one failing part does
    not hold back the others)."""
    now = now or utcnow()
    interval = settings.alerts.anomaly_interval_s or 60.0
    since = state.since or now - dt.timedelta(seconds=interval)
    parts: list[Callable[[], None]] = [
        lambda: _budgets(db, settings, now),
        lambda: _auth_failures(db, since, now),
        lambda: _serving(db, serving, state),
        lambda: _anomalies(db, settings, probes, state, now, interval),
    ]
    for part in parts:
        try:
            part()
        except Exception:  # one part's failure is logged; the next scan tries again
            log.exception("alert scan part failed")
    state.since = now


def _budgets(db: Database, settings: Settings, now: dt.datetime) -> None:
    with db.session(Scope.everything()) as session:
        for project_id in session.scalars(select(Budget.project_id)).all():
            status = budgets.budget_status(session, project_id, now, settings)
            values = {
                "budget_fraction": status.fraction if status.fraction is not None else 0.0,
                "gpu_hours": status.gpu_hours_used,
                "money": status.money_used,
            }
            if has_rules(session, project_id, "cost"):
                evaluate_rules(
                    session,
                    project_id=project_id,
                    source="cost",
                    subject="budget",
                    values=values,
                    now=now,
                )
            elif status.state == "ok":
                resolve_alert(session, "budget", "budget", now, project_id=project_id)
            else:
                raise_alert(
                    session,
                    project_id=project_id,
                    kind="budget",
                    subject="budget",
                    message=status.message,
                    severity="error" if status.state == "blocked" else "warning",
                    source="cost",
                    details=values,
                    now=now,
                )


def _auth_failures(db: Database, since: dt.datetime, now: dt.datetime) -> None:
    with db.session(Scope.everything()) as session:
        counts = session.execute(
            select(AuditEntry.project, func.count())
            .where(
                AuditEntry.outcome == "denied",
                AuditEntry.at >= since,
                AuditEntry.at < now,
                AuditEntry.project.is_not(None),
            )
            .group_by(AuditEntry.project)
        ).all()
        for name, n in counts:
            project_id = session.scalar(select(Project.id).where(Project.name == name))
            if project_id is not None:
                evaluate_rules(
                    session,
                    project_id=project_id,
                    source="security",
                    subject="auth",
                    values={"auth_failures": float(n)},
                    now=now,
                )


def _serving(db: Database, serving: ServingProbes, state: ScanState) -> None:
    if serving.figures is None:
        return
    with db.session(Scope.everything()) as session:
        ids = {name: pid for name, pid in session.execute(select(Project.name, Project.id))}
        for project, name, figures in serving.figures():
            project_id = ids.get(project)
            if project_id is None:
                continue
            requests, errors = figures["requests"], figures["errors"]
            before = state.last_serving.get((project, name), (0, 0))
            state.last_serving[(project, name)] = (requests, errors)
            n, e = requests - before[0], errors - before[1]
            latency = figures["latency_ms"]
            values = {k: latency[q] for k, q in (("p50_ms", "p50"), ("p99_ms", "p99"))}
            evaluate_rules(
                session,
                project_id=project_id,
                source="latency",
                subject=name,
                values={k: v for k, v in values.items() if v is not None},
            )
            if n > 0:
                evaluate_rules(
                    session,
                    project_id=project_id,
                    source="errors",
                    subject=name,
                    values={"error_rate": e / n, "errors": float(e)},
                )
        if serving.rate_limited is not None:
            for (project_id, name), total in dict(serving.rate_limited()).items():
                new = total - state.last_limited.get((project_id, name), 0)
                state.last_limited[(project_id, name)] = total
                if new > 0:
                    evaluate_rules(
                        session,
                        project_id=project_id,
                        source="security",
                        subject=name,
                        values={"rate_limited": float(new)},
                    )


def _anomalies(
    db: Database,
    settings: Settings,
    probes: anomalies.Probes,
    state: ScanState,
    now: dt.datetime,
    interval: float,
) -> None:
    limit = settings.alerts.anomaly_z
    with db.session(Scope.everything()) as session:
        found = anomalies.login_failures(session, now, interval, limit)
        found += anomalies.process_findings(session, probes, state.process, limit)
        anomalies.raise_findings(session, found, now)


class AlertWorker:
    """The daemon thread: deliveries every ``delivery_interval_s``, a scan every
    ``anomaly_interval_s`` (none when 0)."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        settings: Settings,
        probes: anomalies.Probes = anomalies.Probes(),
        serving: ServingProbes = ServingProbes(),
    ) -> None:
        self.db, self.keyring, self.settings = db, keyring, settings
        self.probes, self.serving = probes, serving
        self.state = ScanState()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="underlay-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.settings.alerts.delivery_timeout_s + 5)

    def _run(self) -> None:
        config = self.settings.alerts
        next_scan = time.monotonic() + config.anomaly_interval_s
        while not self._stop.is_set():
            try:
                webhooks.deliver_due(self.db, self.keyring, config)
                if config.anomaly_interval_s and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + config.anomaly_interval_s
                    scan(self.db, self.settings, self.state, self.probes, self.serving)
            except Exception:  # a database hiccup: logged, tried again at the next tick
                log.exception("alert worker tick failed")
            self._stop.wait(config.delivery_interval_s)

"""Anomalies on the platform itself: robust z-scores over its own figures.

A figure is an anomaly when its robust z-score against its own recent history is above
``alerts.anomaly_z`` (6 by default) and it moved by more than a floor that keeps tiny
figures quiet (one failed sign-in after none is not an attack). The robust z-score uses
the median and the median absolute deviation (MAD), so one earlier spike does not hide the
next one the way it inflates a standard deviation::

    z = 0.6745 * (x - median) / MAD

With a MAD of 0 (a flat history) the mean absolute deviation stands in (``z = (x - median)
/ (1.2533 * meanAD)``), and with that 0 too any change is infinitely unusual, so the floor
alone decides.

Figures (each raises ``kind="anomaly"`` with ``source="anomaly"``, the subject naming it):

- ``login-failures:<address>``: failed sign-ins from one address per scan interval, from the
  audit log (``auth.login`` entries not ``ok``), history the previous 24 intervals; floor 5;
  cluster-wide (global admins see it);
- ``api-errors``: the share of API answers with status 400 or more in the interval (this
  process's request counters), floor 20 requests and a rise of 0.2; cluster-wide;
- ``gpu-power:<node>/gpu<i>`` and ``gpu-utilization:<node>/gpu<i>``: each accelerator's
  reported power draw and utilisation, floors 30 W and 0.3; cluster-wide;
- ``token-volume:<token>``: rows a token asked a project's deployments for in the interval,
  floor 1,000 rows; in the token's project.

Histories of the last three are kept in the server process (they start empty after a
restart, and no figure is judged before it has 8 earlier values).
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.compute.models import AcceleratorRow, Alert, NodeRow
from underlay.monitoring.alerts import raise_alert
from underlay.store.models import AuditEntry

MIN_HISTORY = 8
HISTORY = 24


def robust_z(history: Sequence[float], value: float) -> float:
    """How unusual ``value`` is against ``history``: 0.6745 (x - median) / MAD (the mean
    absolute deviation stands in for a MAD of 0; infinite when both are 0 and x differs)."""
    if not history:
        return 0.0
    median = statistics.median(history)
    deviations = [abs(x - median) for x in history]
    mad = statistics.median(deviations)
    if mad > 0:
        return 0.6745 * (value - median) / mad
    mean_ad = statistics.fmean(deviations)
    if mean_ad > 0:
        return (value - median) / (1.2533 * mean_ad)
    if value == median:
        return 0.0
    return math.copysign(math.inf, value - median)


@dataclass
class SeriesBook:
    """Recent values of in-process figures, one bounded history per key."""

    size: int = HISTORY
    series: dict[str, deque[float]] = field(default_factory=dict)

    def judge(self, key: str, value: float) -> tuple[float, float] | None:
        """Add ``value`` to ``key``'s history; the robust z-score and the history's median
        (before the value) if the history was long enough to judge by."""
        past = self.series.setdefault(key, deque(maxlen=self.size))
        verdict = None
        if len(past) >= MIN_HISTORY:
            verdict = (robust_z(list(past), value), statistics.median(past))
        past.append(value)
        return verdict


@dataclass(frozen=True)
class Finding:
    project_id: int | None
    subject: str
    value: float
    z: float
    baseline: float
    what: str


def _flag(
    findings: list[Finding],
    *,
    project_id: int | None,
    subject: str,
    value: float,
    verdict: tuple[float, float] | None,
    floor: float,
    limit: float,
    what: str,
) -> None:
    if verdict is None:
        return
    z, baseline = verdict
    if z > limit and value - baseline >= floor:
        findings.append(Finding(project_id, subject, value, z, baseline, what))


def login_failures(
    session: Session, now: dt.datetime, interval_s: float, limit: float
) -> list[Finding]:
    """Failed sign-ins per address in the last interval against that address's previous 24
    intervals (from the audit log, so a restart keeps the history)."""
    step = dt.timedelta(seconds=interval_s)
    start = now - step * (HISTORY + 1)
    rows = session.execute(
        select(AuditEntry.client, AuditEntry.at).where(
            AuditEntry.action == "auth.login", AuditEntry.outcome != "ok", AuditEntry.at >= start
        )
    )
    counts: dict[str, list[float]] = {}
    for client, at in rows:
        bucket = int((now - at) / step)  # 0: the latest interval
        if 0 <= bucket <= HISTORY:
            counts.setdefault(client or "?", [0.0] * (HISTORY + 1))[bucket] += 1
    findings: list[Finding] = []
    for address, per_bucket in counts.items():
        latest, history = per_bucket[0], per_bucket[1:]
        z = robust_z(history, latest)
        baseline = statistics.median(history)
        if z > limit and latest - baseline >= 5:
            findings.append(
                Finding(None, f"login-failures:{address}", latest, z, baseline, "failed sign-ins")
            )
    return findings


@dataclass(frozen=True)
class Probes:
    """In-process figures the server hands the scan (None where it has none)."""

    api_counts: Callable[[], tuple[float, float]] | None = None  # (requests, errors) so far
    token_rows: Callable[[], Mapping[tuple[int, str], int]] | None = None  # so far


@dataclass
class ProcessFigures:
    """What the scan remembers between runs in one process."""

    book: SeriesBook = field(default_factory=SeriesBook)
    last_api: tuple[float, float] | None = None
    last_rows: dict[tuple[int, str], int] = field(default_factory=dict)


def process_findings(
    session: Session, probes: Probes, state: ProcessFigures, limit: float
) -> list[Finding]:
    """API error share, accelerator power and utilisation, and rows per token, each against
    its own history in ``state``."""
    findings: list[Finding] = []
    book = state.book
    if probes.api_counts is not None:
        requests, errors = probes.api_counts()
        if state.last_api is not None:
            n, e = requests - state.last_api[0], errors - state.last_api[1]
            if n >= 20:
                share = e / n
                verdict = book.judge("api-errors", share)
                _flag(
                    findings,
                    project_id=None,
                    subject="api-errors",
                    value=share,
                    verdict=verdict,
                    floor=0.2,
                    limit=limit,
                    what="share of API errors",
                )
        state.last_api = (requests, errors)
    accs = session.execute(
        select(
            NodeRow.name,
            AcceleratorRow.index,
            AcceleratorRow.power_watts,
            AcceleratorRow.utilization,
        ).join(NodeRow, NodeRow.id == AcceleratorRow.node_id)
    )
    for node, index, power, utilization in accs:
        where = f"{node}/gpu{index}"
        if power is not None:
            _flag(
                findings,
                project_id=None,
                subject=f"gpu-power:{where}",
                value=power,
                verdict=book.judge(f"gpu-power:{where}", power),
                floor=30.0,
                limit=limit,
                what="GPU power (W)",
            )
        _flag(
            findings,
            project_id=None,
            subject=f"gpu-utilization:{where}",
            value=utilization,
            verdict=book.judge(f"gpu-utilization:{where}", utilization),
            floor=0.3,
            limit=limit,
            what="GPU utilisation",
        )
    if probes.token_rows is not None:
        now_rows = dict(probes.token_rows())
        for (project_id, token), total in now_rows.items():
            rows = float(total - state.last_rows.get((project_id, token), 0))
            key = f"token-volume:{project_id}:{token}"
            _flag(
                findings,
                project_id=project_id,
                subject=f"token-volume:{token}",
                value=rows,
                verdict=book.judge(key, rows),
                floor=1000.0,
                limit=limit,
                what="rows asked for by one token",
            )
        state.last_rows = now_rows
    return findings


def raise_findings(session: Session, findings: list[Finding], now: dt.datetime) -> list[Alert]:
    """One ``kind="anomaly"`` alert per finding (counted again while open)."""
    raised = []
    for f in findings:
        z = "inf" if math.isinf(f.z) else f"{f.z:.1f}"
        alert, _ = raise_alert(
            session,
            project_id=f.project_id,
            kind="anomaly",
            subject=f.subject,
            message=f"{f.what} is {f.value:g}, usually {f.baseline:g} (robust z-score {z})",
            severity="warning",
            source="anomaly",
            details={
                "value": f.value,
                "baseline": f.baseline,
                "z": None if math.isinf(f.z) else f.z,
            },
            now=now,
        )
        raised.append(alert)
    return raised

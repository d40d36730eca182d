"""Anomalies on the platform itself: robust z-scores and the figures they watch."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import httpx
from sqlalchemy import select

from underlay.compute.models import Alert
from underlay.monitoring import anomalies
from underlay.monitoring.anomalies import Probes, ProcessFigures, SeriesBook, robust_z
from underlay.monitoring.worker import ScanState, scan
from underlay.store import Scope


def test_robust_z_is_not_fooled_by_an_earlier_spike() -> None:
    calm = [10.0, 11, 9, 10, 12, 10, 9, 11]
    assert robust_z(calm, 10.0) == 0.0
    assert robust_z(calm, 40.0) > 6
    spiky = [*calm, 500.0]  # a standard deviation would hide the next spike
    assert robust_z(spiky, 40.0) > 6
    mean, sd = sum(spiky) / len(spiky), math.sqrt(sum((x - sum(spiky) / 9) ** 2 for x in spiky) / 9)
    assert (40 - mean) / sd < 1  # what a plain z-score says
    assert robust_z([0.0] * 8, 0.0) == 0.0
    assert robust_z([0.0] * 8, 3.0) == math.inf  # a flat history: only the floor decides
    assert robust_z([0, 0, 0, 0, 0, 0, 0, 4.0], 4.0) > 0  # MAD 0: the mean deviation stands in


def test_a_series_is_judged_only_with_enough_history() -> None:
    book = SeriesBook()
    assert [book.judge("k", 10.0) for _ in range(8)] == [None] * 8
    verdict = book.judge("k", 10.0)
    assert verdict == (0.0, 10.0)


def test_query_volume_per_token_and_api_errors_raise_anomalies(db: Any) -> None:
    rows = {(1, "tok-a"): 0, (1, "tok-b"): 0}
    api = [0.0, 0.0]
    probes = Probes(api_counts=lambda: (api[0], api[1]), token_rows=lambda: rows)
    state = ProcessFigures()
    found: list[anomalies.Finding] = []
    with db.session(Scope.everything()) as s:
        for i in range(10):
            rows[(1, "tok-a")] += 100 + i  # steady
            rows[(1, "tok-b")] += 100 + i
            api[0] += 100
            api[1] += 1
            found += anomalies.process_findings(s, probes, state, limit=6)
        assert found == []
        rows[(1, "tok-b")] += 50_000  # one token suddenly asks for 500 times as much
        api[0] += 100
        api[1] += 60
        found = anomalies.process_findings(s, probes, state, limit=6)
    subjects = {(f.project_id, f.subject) for f in found}
    assert subjects == {(1, "token-volume:tok-b"), (None, "api-errors")}


def test_a_burst_of_failed_sign_ins_from_one_address_raises_an_anomaly(
    server: Any, admin: Any
) -> None:
    admin.create_user("carol", password="correct horse battery staple")
    for _ in range(6):
        r = httpx.post(
            f"{server.url}/api/v1/auth/login", json={"user": "carol", "password": "wrong password!"}
        )
        assert r.status_code in (401, 429)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    db, settings = server.platform.db, server.settings
    scan(db, settings, ScanState(), now=now)
    with db.session(Scope.everything()) as s:
        (alert,) = s.scalars(select(Alert).where(Alert.kind == "anomaly")).all()
    assert (alert.subject, alert.project_id, alert.source) == (
        "login-failures:127.0.0.1",
        None,
        "anomaly",
    )
    assert "failed sign-ins is 6, usually 0" in alert.message
    # a scan an hour later: those failures are history, the latest interval is calm
    scan(db, settings, ScanState(), now=now + dt.timedelta(hours=1))
    with db.session(Scope.everything()) as s:
        assert s.scalars(select(Alert.count)).one() == 1


def test_a_gpu_drawing_far_more_power_than_usual_is_an_anomaly(db: Any) -> None:
    from underlay.compute.models import AcceleratorRow, NodeRow

    with db.session(Scope.everything()) as s:
        node = NodeRow(name="n1", cpu_milli=8000, memory_mib=1024)
        s.add(node)
        s.flush()
        s.add(
            AcceleratorRow(
                node_id=node.id,
                index=0,
                type="H100",
                memory_mib=80_000,
                power_watts=100.0,
                utilization=0.5,
            )
        )
    state, found = ProcessFigures(), []
    for i in range(12):
        with db.session(Scope.everything()) as s:
            acc = s.scalars(select(AcceleratorRow)).one()
            acc.power_watts = 100.0 + (i % 3)  # the usual draw, a little noise
            acc.utilization = 0.5 + 0.01 * (i % 2)
            found += anomalies.process_findings(s, Probes(), state, limit=6)
    assert found == []
    with db.session(Scope.everything()) as s:
        s.scalars(select(AcceleratorRow)).one().power_watts = 400.0
        found = anomalies.process_findings(s, Probes(), state, limit=6)
        alerts = anomalies.raise_findings(s, found, dt.datetime.now(dt.UTC))
    assert [(a.subject, a.kind, a.project_id) for a in alerts] == [
        ("gpu-power:n1/gpu0", "anomaly", None)
    ]

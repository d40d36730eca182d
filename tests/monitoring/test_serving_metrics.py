"""Serving series in ``/metrics`` and performance from real feedback, on the serving tests'
live server (one deployment, a few requests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, sqlite_url
from tests.monitoring.test_metrics import _scrape, _value
from tests.serving.conftest import PROJECT, X, Y, ready, serve, wait_until
from underlay.client import Client
from underlay.data.tables import TableStore
from underlay.monitoring.performance import deployment_performance
from underlay.store import Scope
from underlay.store.models import Project

pytestmark = pytest.mark.slow
NAME = "churn-metrics"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("serving-metrics")
    yield from serve(tmp, sqlite_url(sqlite_template, tmp))


def _predict(live: LiveServer, rows: Any, rid: str) -> httpx.Response:
    url = f"{live.url}/api/v1/projects/{PROJECT}/deployments/{NAME}/predict"
    headers = {"Authorization": f"Bearer {live.admin_token}", "X-Request-Id": rid}
    return httpx.post(url, json={"records": rows}, headers=headers, timeout=60)


def test_serving_series_are_scoped_and_performance_joins_feedback(live: LiveServer) -> None:
    with live.client() as admin:
        _serve_and_label(live, admin)
        scraped = _scrape(live.url, live.admin_token)
        where = {"project": PROJECT, "deployment": NAME}
        assert _value(scraped, "underlay_serving_requests_total", status="200", **where) == 20
        assert _value(scraped, "underlay_serving_request_latency_seconds_count", **where) == 20
        assert ({"project": PROJECT, "deployment": NAME}, 0.0) in scraped[
            "underlay_serving_errors_total"
        ]  # the malformed request was refused while its body was read, before the counters
        assert _value(scraped, "underlay_serving_batch_rows_sum", **where) == 20
        admin.create_user("olga")
        admin.add_member("other", "olga", "member")
        olga = _scrape(live.url, admin.create_token("t", user="olga").token)
        labelled = {labels.get("project") for series in olga.values() for labels, _ in series}
        assert labelled == {"other"}  # nothing of shop, its deployment included
        admin.delete_deployment(PROJECT, NAME)


def _serve_and_label(live: LiveServer, admin: Client) -> None:
    admin.deploy(PROJECT, NAME, "churn@1", replicas=1, log_sample_rate=1.0)
    ready(admin, NAME, 1)
    for i in range(20):
        assert _predict(live, X[i : i + 1].tolist(), f"metrics-{i:04d}").status_code == 200
    assert _predict(live, [[1.0]], "metrics-bad").status_code == 400

    def logged() -> Any:
        stats = admin.deployment_stats(PROJECT, NAME)
        return stats.get("prediction_log", {}).get("logged_rows", 0) >= 20

    wait_until(logged, "the prediction log to be written", within_s=30)
    labels = [{"request_id": f"metrics-{i:04d}", "label": int(Y[i])} for i in range(20)]
    admin.send_feedback(PROJECT, NAME, labels)
    store = TableStore(live.settings)
    with live.platform.db.session(Scope.everything()) as session:
        pid = session.query(Project.id).filter(Project.name == PROJECT).scalar()
        report = deployment_performance(session, store, pid, NAME, "classification", min_rows=20)
    assert report.overall.rows == 20 and report.overall.insufficient is None
    from sklearn.linear_model import LogisticRegression  # the deployed model, refitted

    from tests.serving.conftest import model

    fitted: LogisticRegression = model()
    expected = float((fitted.predict(X[:20]) == Y[:20]).mean())
    assert report.overall.metrics["accuracy"] == pytest.approx(expected)

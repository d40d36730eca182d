"""Traffic through a live deployment: a canary of a broken version rolled back by itself
(event and audit), a canary promoted by hand, per-token rate limits (429 with Retry-After),
the sampled prediction log and the feedback that joins it, and the per-deployment counters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.serving.conftest import PROJECT, X, model, ready, wait_until
from underlay.client import Client
from underlay.errors import Conflict, InvalidInput

pytestmark = pytest.mark.slow


def _predict(
    live: LiveServer, name: str, token: str, rows: Any, rid: str | None = None
) -> httpx.Response:
    url = f"{live.url}/api/v1/projects/{PROJECT}/deployments/{name}/predict"
    headers = {"Authorization": f"Bearer {token}"}
    if rid:
        headers["X-Request-Id"] = rid
    return httpx.post(url, json={"records": rows}, headers=headers, timeout=60)


def _kinds(admin: Client, name: str) -> list[str]:
    return [e.kind for e in admin.deployment_events(PROJECT, name)]


def test_a_broken_canary_is_rolled_back_by_itself_and_audited(
    live: LiveServer, admin: Client
) -> None:
    admin.deploy(PROJECT, "churn-canary", "churn@1", replicas=1)
    ready(admin, "churn-canary", 1)
    started = admin.start_canary(
        PROJECT,
        "churn-canary",
        "churn@3",
        weight=0.5,
        min_requests=10,
        max_error_rate=0.2,
        window_s=300,
        reason="try the new features",
    )
    assert started.canary is not None and started.canary.state == "starting"
    wait_until(
        lambda: (
            (admin.read_deployment(PROJECT, "churn-canary").canary or started.canary).state
            != "starting"
        ),
        "the canary's replica to be ready",
        within_s=90,
    )
    statuses: list[int] = []

    def rolled_back() -> bool:
        response = _predict(live, "churn-canary", live.admin_token, X[:2].tolist())
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert response.json()["predictions"] == model().predict(X[:2]).tolist()
        else:
            assert response.status_code == 400 and "the model failed" in response.text
        return "rollback" in _kinds(admin, "churn-canary")

    wait_until(rolled_back, "the automatic rollback", within_s=60)
    assert 400 in statuses  # the canary did fail requests before it was rolled back
    found = admin.read_deployment(PROJECT, "churn-canary")
    assert found.canary is not None and found.canary.state == "rolled_back"
    assert [(t.arm, t.weight) for t in found.traffic] == [("stable", 1.0), ("canary", 0.0)]
    (event,) = [e for e in admin.deployment_events(PROJECT, "churn-canary") if e.kind == "rollback"]
    assert event.actor == "canary-monitor" and event.detail["auto"] is True
    assert (
        event.reason.startswith("automatic: ") and event.detail["figures"]["canary"]["errors"] > 0
    )
    audited = admin.list_audit(action="deployment.rollback")
    assert [(a.actor, a.outcome) for a in audited] == [("canary-monitor", "ok")]
    for _ in range(20):  # all traffic on the stable version again
        answer = _predict(live, "churn-canary", live.admin_token, X[:2].tolist())
        assert answer.status_code == 200 and answer.json()["model_version"] == 1
    wait_until(
        lambda: all(
            r.arm == "stable" for r in admin.read_deployment(PROJECT, "churn-canary").replicas
        ),
        "the canary's replica to drain and go",
    )
    admin.delete_deployment(PROJECT, "churn-canary")


def test_a_canary_takes_its_share_and_is_promoted(live: LiveServer, admin: Client) -> None:
    admin.deploy(PROJECT, "churn-promote", "churn@1", replicas=1)
    ready(admin, "churn-promote", 1)
    admin.start_canary(PROJECT, "churn-promote", "churn@2", weight=0.5, min_requests=1000)
    wait_until(
        lambda: (
            getattr(admin.read_deployment(PROJECT, "churn-promote").canary, "state", "")
            == "running"
        ),
        "the canary to run",
        within_s=90,
    )
    seen = set()
    for _ in range(60):
        answer = _predict(live, "churn-promote", live.admin_token, X[:3].tolist())
        assert answer.status_code == 200
        seen.add(answer.json()["model_version"])
    assert seen == {1, 2}
    with pytest.raises(Conflict, match="runs a canary of version 2 already"):
        admin.start_canary(PROJECT, "churn-promote", "churn@1")
    promoted = admin.promote_canary(PROJECT, "churn-promote", reason="looks good")
    assert promoted.target_version == 2
    ready(admin, "churn-promote", 1, version=2)
    answer = _predict(live, "churn-promote", live.admin_token, X[:3].tolist())
    assert answer.json()["model_version"] == 2
    kinds = _kinds(admin, "churn-promote")
    assert kinds[:3] == ["deploy", "canary.start", "canary.running"]
    assert {"promote", "update", "update.done"} <= set(kinds)
    admin.delete_deployment(PROJECT, "churn-promote")


def test_limits_logs_feedback_and_counters(live: LiveServer, admin: Client) -> None:
    admin.deploy(
        PROJECT,
        "churn-logged",
        "churn@1",
        replicas=1,
        log_sample_rate=1.0,
        limits={"rate_per_s": 0.5, "burst": 6},
    )
    ready(admin, "churn-logged", 1)
    token = admin.create_token("limited-client").token
    answers = [
        _predict(live, "churn-logged", token, X[:2].tolist(), f"logged-{i:04d}") for i in range(4)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert int(refused.headers["retry-after"]) >= 1
    assert "rate limit" in refused.json()["detail"]
    # another token has its own bucket
    assert _predict(live, "churn-logged", live.admin_token, X[:1].tolist()).status_code == 200

    def logged() -> Any:
        stats = admin.deployment_stats(PROJECT, "churn-logged")
        return stats if stats.get("prediction_log", {}).get("logged_rows", 0) >= 7 else None

    stats = wait_until(logged, "the prediction log to be written", within_s=30)
    assert stats["prediction_log"]["dropped_requests"] == 0
    assert stats["by_status"] == {"200": 4, "429": 1}
    assert stats["batches"]["rows"] == 7 and stats["latency_ms"]["count"] == 5
    stored = admin.send_feedback(
        PROJECT,
        "churn-logged",
        [{"request_id": "logged-0000", "label": 1}, {"request_id": "never-sent", "label": 0}],
    )
    assert (stored.accepted, stored.unlogged) == (2, 1)
    with pytest.raises(InvalidInput):
        admin.send_feedback(PROJECT, "churn-logged", [{"request_id": "x", "label": None}])
    admin.delete_deployment(PROJECT, "churn-logged")

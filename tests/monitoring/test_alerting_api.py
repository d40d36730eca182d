"""Alert rules, silences and webhooks over HTTP: roles, tenant scope, audit, /metrics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from underlay.errors import InvalidInput, NotFound, PermissionDenied
from underlay.identity import SYSTEM, read_project
from underlay.monitoring.alerts import raise_alert


@pytest.fixture
def people(server: Any, admin: Any) -> Any:
    """alice: member of shop; victor: viewer of shop; mallory: member of other only."""
    admin.create_project("shop")
    admin.create_project("other")
    for user, project, role in (
        ("alice", "shop", "member"),
        ("victor", "shop", "viewer"),
        ("mallory", "other", "member"),
    ):
        admin.create_user(user)
        admin.add_member(project, user, role)
    clients = {
        u: server.client(admin.create_token("t", user=u).token)
        for u in ("alice", "victor", "mallory")
    }
    yield clients
    for c in clients.values():
        c.close()


def test_viewers_read_members_change_and_other_projects_see_nothing(
    people: Any, admin: Any
) -> None:
    alice, victor, mallory = people["alice"], people["victor"], people["mallory"]
    alice.add_alert_rule(
        "shop",
        "slow",
        source="latency",
        metric="p99_ms",
        comparison=">",
        threshold=250,
        severity="error",
    )
    alice.add_webhook("shop", "ops", "https://hooks.example/alerts", kinds=["drift"])
    alice.silence_alerts("shop", "drift", seconds=3600, subject="churn", reason="retraining")
    assert [r.name for r in victor.alert_rules("shop")] == ["slow"]
    assert [(h.name, h.kinds, h.signed) for h in victor.webhooks("shop")] == [
        ("ops", ["drift"], False)
    ]
    assert [(s.kind, s.subject) for s in victor.alert_silences("shop")] == [("drift", "churn")]
    with pytest.raises(PermissionDenied, match=r"viewer .* may not write"):
        victor.add_alert_rule(
            "shop", "x", source="errors", metric="error_rate", comparison=">", threshold=0.1
        )
    with pytest.raises(PermissionDenied, match="viewer"):
        victor.remove_webhook("shop", "ops")
    with pytest.raises(PermissionDenied, match="viewer"):
        victor.silence_alerts("shop", "drift", seconds=60)
    for call in (
        lambda: mallory.alert_rules("shop"),
        lambda: mallory.webhooks("shop"),
        lambda: mallory.remove_alert_rule("shop", "slow"),
        lambda: mallory.test_webhook("shop", "ops"),
    ):
        with pytest.raises(NotFound, match="project 'shop' not found"):
            call()
    denied = {(e.actor, e.action) for e in admin.list_audit(outcome="denied")}
    assert {("victor", "alert.rule.create"), ("victor", "webhook.delete")} <= denied
    done = {e.action for e in admin.list_audit(project="shop", outcome="ok")}
    assert {"alert.rule.create", "webhook.create", "alert.silence"} <= done
    alice.remove_alert_rule("shop", "slow")
    alice.remove_webhook("shop", "ops")
    assert alice.alert_rules("shop") == [] and alice.webhooks("shop") == []
    with pytest.raises(NotFound, match="rule 'slow' does not exist"):
        alice.remove_alert_rule("shop", "slow")


def test_bad_bodies_get_problem_responses(server: Any, people: Any) -> None:
    alice = people["alice"]
    with pytest.raises(InvalidInput, match="must start with http:// or https://"):
        alice.add_webhook("shop", "ops", "file:///etc/passwd")
    with pytest.raises(InvalidInput, match="comparison"):
        alice.add_alert_rule(
            "shop", "x", source="errors", metric="error_rate", comparison="~", threshold=1
        )
    token = {"Authorization": f"Bearer {server.admin_token}"}
    for path, body in (
        ("alerts/rules", {"name": "x"}),
        ("webhooks", {"name": "x", "url": 3}),
        ("alerts/silences", {"kind": "drift", "seconds": -1}),
    ):
        r = httpx.post(f"{server.url}/api/v1/projects/shop/{path}", json=body, headers=token)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_every_alert_is_audited_and_shown_with_severity_count_and_source(
    server: Any, people: Any, admin: Any
) -> None:
    from tests.conftest import free_port

    people["alice"].add_webhook("shop", "ops", f"http://127.0.0.1:{free_port()}/down")
    with server.platform.unit(SYSTEM, "test", "test", audited=False) as u:
        shop = read_project(u.session, "shop", SYSTEM)
        for _ in range(3):
            raise_alert(
                u.session,
                project_id=shop.id,
                kind="drift",
                subject="churn",
                message="drifted",
                severity="error",
                source="drift",
            )
    (alert,) = people["victor"].list_alerts(project="shop")
    assert (alert.severity, alert.count, alert.source) == ("error", 3, "drift")
    assert people["mallory"].list_alerts() == []
    (entry,) = admin.list_audit(action="alert.raise")
    assert (entry.resource, entry.project) == (f"alert:{alert.id}", "shop")
    metrics = httpx.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.admin_token}"}
    ).text
    assert 'underlay_alerts_open{kind="drift",project="shop",severity="error"} 1.0' in metrics
    assert 'underlay_alert_deliveries_total{project="shop",state="pending"} 1.0' in metrics


def test_refused_requests_feed_the_security_rules(server: Any, people: Any) -> None:
    import datetime as dt

    from sqlalchemy import select

    from underlay.compute.models import Alert
    from underlay.monitoring.worker import ScanState, scan
    from underlay.store import Scope

    people["alice"].add_alert_rule(
        "shop",
        "probing",
        source="security",
        metric="auth_failures",
        comparison=">=",
        threshold=3,
        severity="critical",
    )
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            people["victor"].add_webhook("shop", "x", "https://example.com/h")
    scan(
        server.platform.db,
        server.settings,
        ScanState(since=start),
        now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
    )
    with server.platform.db.session(Scope.everything()) as s:
        (alert,) = s.scalars(select(Alert).where(Alert.kind == "security")).all()
    assert (alert.subject, alert.severity) == ("auth", "critical")
    assert "auth_failures of auth is 3" in alert.message

"""raise_alert, silences, rules and the webhook outbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from underlay.compute.alerts import record_alert
from underlay.compute.budgets import set_budget
from underlay.compute.models import Alert
from underlay.config import Settings
from underlay.crypto import Keyring
from underlay.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from underlay.monitoring import rules, webhooks
from underlay.monitoring.alert_models import AlertDelivery, Webhook
from underlay.monitoring.alerts import create_silence, raise_alert
from underlay.monitoring.rules import RuleSpec, evaluate_rules
from underlay.monitoring.webhooks import WebhookSpec
from underlay.monitoring.worker import ScanState, scan
from underlay.store import Database, Scope
from underlay.store.models import Project

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@dataclass
class World:
    db: Database
    keyring: Keyring
    settings: Settings
    shop: int
    other: int


@pytest.fixture
def world(db: Database, settings: Settings) -> Iterator[World]:
    with db.session(Scope.everything()) as s:
        shop, other = Project(name="shop"), Project(name="other")
        s.add_all([shop, other])
        s.flush()
        ids = shop.id, other.id
    yield World(db, Keyring(settings), settings, *ids)


def _deliveries(world: World) -> list[AlertDelivery]:
    with world.db.session(Scope.everything()) as s:
        return list(s.scalars(select(AlertDelivery).order_by(AlertDelivery.id)))


def _hook(world: World, name: str = "ops", **kw: object) -> None:
    spec = WebhookSpec(name=name, url=str(kw.pop("url", "http://127.0.0.1:9/hook")), **kw)  # type: ignore[arg-type]
    with world.db.session(Scope.everything()) as s:
        webhooks.create_webhook(s, world.keyring, world.shop, spec)


def test_a_repeated_alert_counts_instead_of_raising_again(world: World) -> None:
    _hook(world)
    later = T0 + dt.timedelta(minutes=5)
    with world.db.session(Scope.everything()) as s:
        first, new = raise_alert(
            s,
            project_id=world.shop,
            kind="drift",
            subject="churn",
            message="3 features drifted",
            source="drift",
            now=T0,
        )
        again, new_again = raise_alert(
            s,
            project_id=world.shop,
            kind="drift",
            subject="churn",
            message="4 features drifted",
            severity="error",
            details={"n": 4},
            now=later,
        )
        assert (new, new_again, again.id) == (True, False, first.id)
        assert (again.count, again.last_seen, again.created_at) == (2, later, T0)
        assert (again.severity, again.message, again.source) == (
            "error",
            "4 features drifted",
            "drift",
        )
        assert json.loads(again.details) == {"n": 4}
        lower, _ = raise_alert(
            s,
            project_id=world.shop,
            kind="drift",
            subject="churn",
            message="x",
            severity="info",
            now=later,
        )
        assert lower.severity == "error"  # never lowered while open
    assert len(_deliveries(world)) == 1  # one condition, one delivery


def test_record_alert_delegates_and_keeps_its_contract(world: World) -> None:
    with world.db.session(Scope.everything()) as s:
        alert, new = record_alert(s, "idle_gpu", "idle 10 min", world.shop, subject="n1/gpu0")
        assert new and (alert.source, alert.severity, alert.count) == ("compute", "warning", 1)
        with pytest.raises(InvalidInput, match="needs a kind"):
            record_alert(s, "", "x", world.shop)
    with (
        world.db.session(Scope.projects(world.other)) as s,
        pytest.raises(PermissionDenied, match="outside this session's scope"),
    ):
        raise_alert(s, project_id=world.shop, kind="drift", message="x")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"kind": "Drift!"}, "an alert kind is"),
        ({"severity": "fatal"}, "severity 'fatal' is not one of"),
        ({"details": {"x": "y" * 30_000}}, "20,000 characters"),
    ],
)
def test_bad_alerts_are_refused(world: World, bad: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"kind": "drift", "message": "m", **bad}
    with world.db.session(Scope.everything()) as s, pytest.raises(InvalidInput, match=match):
        raise_alert(s, project_id=world.shop, **args)  # type: ignore[arg-type]


def test_a_silenced_alert_is_recorded_but_not_delivered(world: World) -> None:
    _hook(world)
    with world.db.session(Scope.everything()) as s:
        create_silence(s, world.shop, "drift", subject="churn", seconds=3600, now=T0)
        quiet, _ = raise_alert(
            s,
            project_id=world.shop,
            kind="drift",
            subject="churn",
            message="m",
            now=T0 + dt.timedelta(minutes=1),
        )
        loud, _ = raise_alert(
            s,
            project_id=world.shop,
            kind="drift",
            subject="fraud",
            message="m",
            now=T0 + dt.timedelta(minutes=1),
        )
        assert (quiet.silenced, loud.silenced) == (True, False)
        quiet.resolved_at = T0 + dt.timedelta(minutes=2)
        after, _ = raise_alert(
            s,
            project_id=world.shop,
            kind="drift",
            subject="churn",
            message="m",
            now=T0 + dt.timedelta(hours=2),
        )
        assert not after.silenced  # the silence ended
        with pytest.raises(InvalidInput, match="at most 90 days"):
            create_silence(s, world.shop, "drift", seconds=91 * 86400)
    assert sorted(d.alert_id for d in _deliveries(world)) == sorted([loud.id, after.id])


def test_webhooks_get_the_severities_and_kinds_they_ask_for(world: World) -> None:
    _hook(world, "pager", min_severity="error")
    _hook(world, "drift-only", kinds=("drift",), min_severity="info")
    with world.db.session(Scope.everything()) as s:
        hooks = {h.name: h.id for h in webhooks.list_webhooks(s, world.shop)}
        info, _ = raise_alert(s, project_id=world.shop, kind="drift", message="m", severity="info")
        bad, _ = raise_alert(s, project_id=world.shop, kind="budget", message="m", severity="error")
        raise_alert(s, project_id=world.other, kind="drift", message="m", severity="critical")
    got = {(d.webhook_id, d.alert_id) for d in _deliveries(world)}
    assert got == {(hooks["drift-only"], info.id), (hooks["pager"], bad.id)}
    payload = json.loads(next(d.payload for d in _deliveries(world) if d.alert_id == bad.id))
    assert payload["event"] == "alert"
    assert {k: payload["alert"][k] for k in ("id", "project", "kind", "severity", "count")} == {
        "id": bad.id,
        "project": "shop",
        "kind": "budget",
        "severity": "error",
        "count": 1,
    }


def test_an_alert_rolled_back_is_never_delivered(world: World) -> None:
    _hook(world)
    with pytest.raises(RuntimeError), world.db.session(Scope.everything()) as s:
        raise_alert(s, project_id=world.shop, kind="drift", message="m")
        raise RuntimeError("the caller failed after raising")
    assert _deliveries(world) == []
    with world.db.session(Scope.everything()) as s:
        assert s.scalars(select(Alert)).all() == []


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("ftp://example.com/x", "must start with http:// or https://"),
        ("http:///nohost", "has no host"),
        ("javascript:alert(1)", "must start with http"),
    ],
)
def test_only_http_webhooks_are_accepted(world: World, url: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        _hook(world, url=url)


def test_a_webhook_secret_is_stored_sealed(world: World) -> None:
    secret = "s3cret-" + "k" * 20
    _hook(world, secret=secret)
    with world.db.session(Scope.everything()) as s:
        hook = s.scalars(select(Webhook)).one()
        assert hook.secret_sealed is not None and secret.encode() not in hook.secret_sealed
        assert webhooks.describe(hook)["signed"] is True
        with pytest.raises(Conflict, match="exists"):
            webhooks.create_webhook(s, world.keyring, world.shop, WebhookSpec("ops", "http://a"))
        with pytest.raises(InvalidInput, match="16 to 512"):
            webhooks.create_webhook(
                s, world.keyring, world.shop, WebhookSpec("x", "http://a", "short")
            )
        webhooks.delete_webhook(s, world.shop, "ops")
        with pytest.raises(NotFound, match="'ops' does not exist"):
            webhooks.read_webhook(s, world.shop, "ops")


def test_rules_raise_alerts_when_their_comparison_holds(world: World) -> None:
    with world.db.session(Scope.everything()) as s:
        rules.create_rule(s, world.shop, RuleSpec("slow", "latency", "p99_ms", ">", 250, "error"))
        rules.create_rule(
            s, world.shop, RuleSpec("drifty", "drift", "share_drifted", ">=", 0.2, cooldown_s=3600)
        )
        assert (
            evaluate_rules(
                s,
                project_id=world.shop,
                source="latency",
                subject="churn",
                values={"p99_ms": 120.0},
            )
            == []
        )
        (slow,) = evaluate_rules(
            s,
            project_id=world.shop,
            source="latency",
            subject="churn",
            values={"p99_ms": 400.0, "p50_ms": 20.0},
        )
        assert (slow.kind, slow.severity, slow.source, slow.subject) == (
            "latency",
            "error",
            "latency",
            "churn",
        )
        assert json.loads(slow.details)["rule"] == "slow"
        assert "p99_ms of churn is 400 (> 250, rule 'slow')" in slow.message
        (drift,) = evaluate_rules(
            s,
            project_id=world.shop,
            source="drift",
            subject="churn",
            values={"share_drifted": 0.4},
            now=T0,
        )
        drift.resolved_at = T0 + dt.timedelta(minutes=1)
        cooled = evaluate_rules(
            s,
            project_id=world.shop,
            source="drift",
            subject="churn",
            values={"share_drifted": 0.5},
            now=T0 + dt.timedelta(minutes=30),
        )
        assert cooled == []  # within the cooldown
        (again,) = evaluate_rules(
            s,
            project_id=world.shop,
            source="drift",
            subject="churn",
            values={"share_drifted": 0.5},
            now=T0 + dt.timedelta(hours=2),
        )
        assert again.id != drift.id
        assert (
            evaluate_rules(
                s,
                project_id=world.other,
                source="latency",
                subject="churn",
                values={"p99_ms": 999.0},
            )
            == []
        )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (RuleSpec("x", "weather", "m", ">", 1), "source 'weather' is not one of"),
        (RuleSpec("x", "latency", "p99_ms", "=>", 1), "comparison '=>' is not one of"),
        (RuleSpec("x", "latency", "p99_ms", ">", float("nan")), "finite"),
        (RuleSpec("X Y", "latency", "p99_ms", ">", 1), "a rule name is"),
        (RuleSpec("x", "latency", "p99_ms", ">", 1, "loud"), "severity 'loud'"),
    ],
)
def test_bad_rules_are_refused(world: World, spec: RuleSpec, match: str) -> None:
    with world.db.session(Scope.everything()) as s, pytest.raises(InvalidInput, match=match):
        rules.create_rule(s, world.shop, spec)


def test_a_budget_nearly_spent_raises_the_budget_alert_and_clears(world: World) -> None:
    with world.db.session(Scope.everything()) as s:
        set_budget(s, world.shop, gpu_hours_per_month=0.0, warn_fraction=0.8)
    scan(world.db, world.settings, ScanState(), now=T0)
    with world.db.session(Scope.everything()) as s:
        (alert,) = s.scalars(select(Alert).where(Alert.kind == "budget")).all()
        assert (alert.project_id, alert.source, alert.severity) == (world.shop, "cost", "error")
        set_budget(s, world.shop, gpu_hours_per_month=100.0)
    scan(world.db, world.settings, ScanState(), now=T0)
    with world.db.session(Scope.everything()) as s:
        assert s.scalars(select(Alert.resolved_at)).one() is not None


def test_cost_rules_replace_the_built_in_budget_alert(world: World) -> None:
    with world.db.session(Scope.everything()) as s:
        set_budget(s, world.shop, gpu_hours_per_month=0.0)
        rules.create_rule(
            s, world.shop, RuleSpec("spent", "cost", "gpu_hours", ">", 10, "critical")
        )
    scan(world.db, world.settings, ScanState(), now=T0)
    with world.db.session(Scope.everything()) as s:
        assert s.scalars(select(Alert)).all() == []  # 0 GPU-hours used: the rule holds its fire


def test_the_scan_feeds_serving_figures_to_latency_errors_and_security_rules(world: World) -> None:
    from underlay.monitoring.worker import ServingProbes

    with world.db.session(Scope.everything()) as s:
        for spec in (
            RuleSpec("slow", "latency", "p99_ms", ">", 250),
            RuleSpec("failing", "errors", "error_rate", ">", 0.1, "error"),
            RuleSpec("hammered", "security", "rate_limited", ">=", 5),
        ):
            rules.create_rule(s, world.shop, spec)
    counters = {"requests": 100, "errors": 1, "latency_ms": {"p50": 10.0, "p99": 90.0}}
    limited = {(world.shop, "churn"): 0}
    probes = ServingProbes(
        figures=lambda: [("shop", "churn", counters)], rate_limited=lambda: limited
    )
    state = ScanState()
    scan(world.db, world.settings, state, serving=probes, now=T0)
    with world.db.session(Scope.everything()) as s:
        assert s.scalars(select(Alert)).all() == []
    counters = {"requests": 200, "errors": 31, "latency_ms": {"p50": 12.0, "p99": 400.0}}
    limited[(world.shop, "churn")] = 7
    scan(world.db, world.settings, state, serving=probes, now=T0 + dt.timedelta(minutes=5))
    with world.db.session(Scope.everything()) as s:
        got = {(a.kind, a.subject, a.severity) for a in s.scalars(select(Alert))}
    assert got == {
        ("latency", "churn", "warning"),
        ("errors", "churn", "error"),
        ("security", "churn", "warning"),
    }


def test_migration_0021_keeps_alerts_and_their_ids(tmp_path: object) -> None:
    """Alerts made before 0021 keep their rows (last_seen = created_at, severity warning,
    count 1) and an id deleted before the upgrade is not handed out again; it downgrades."""
    from pathlib import Path

    from alembic import command
    from sqlalchemy import text

    db = Database(f"sqlite:///{Path(str(tmp_path)) / 'old.db'}")
    command.upgrade(db.alembic_config(), "0019")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO projects (id, name, description, created_at) "
                "VALUES (1, 'a', '', '2026-01-01 00:00:00')"
            )
        )
        for subject in ("kept", "deleted"):
            conn.execute(
                text(
                    "INSERT INTO alerts (kind, project_id, subject, message, created_at)"
                    " VALUES ('idle_gpu', 1, :s, 'm', '2026-01-01 00:00:00')"
                ),
                {"s": subject},
            )
        conn.execute(text("DELETE FROM alerts WHERE subject = 'deleted'"))
    command.upgrade(db.alembic_config(), "0021")
    with db.session(Scope.everything()) as s:
        (old,) = s.scalars(select(Alert)).all()
        assert (old.severity, old.count, old.source, old.silenced) == ("warning", 1, "", False)
        assert old.last_seen == old.created_at and json.loads(old.details) == {}
        new, _ = raise_alert(s, project_id=1, kind="drift", message="m")
        assert new.id == 3
    command.downgrade(db.alembic_config(), "0019")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alerts")).scalar() == 2
    db.dispose()

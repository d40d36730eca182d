"""``underlay alerts``: ls (the outside checks' --json), resolve, silence, rules, webhooks."""

from __future__ import annotations

from typing import Any

from tests.cli.test_cli import (  # noqa: F401 - fixtures
    as_json,
    assert_one_line_error,
    cli,
    cli_home,
    database_url,
)
from tests.conftest import free_port
from tests.monitoring.test_webhook_delivery import Receiver
from underlay.identity import SYSTEM, read_project
from underlay.monitoring.alerts import raise_alert


def test_alerts_ls_shows_severity_count_and_source(server: Any, cli: Any) -> None:  # noqa: F811 - fixtures
    cli("projects", "create", "shop")
    with server.platform.unit(SYSTEM, "test", "test", audited=False) as u:
        shop = read_project(u.session, "shop", SYSTEM)
        for _ in range(2):
            raise_alert(
                u.session,
                project_id=shop.id,
                kind="drift",
                subject="churn",
                message="2 of 9 features drifted",
                severity="error",
                source="drift",
            )
    (row,) = as_json(cli("alerts", "ls", "-p", "shop", "--json"))
    assert {k: row[k] for k in ("kind", "subject", "severity", "count", "source")} == {
        "kind": "drift",
        "subject": "churn",
        "severity": "error",
        "count": 2,
        "source": "drift",
    }
    table = cli("alerts", "ls", "-p", "shop").stdout
    assert "error" in table and "churn" in table
    out = cli("alerts", "silence", "drift", "-p", "shop", "--subject", "churn", "--for", "2h")
    assert out.stdout.startswith("silenced drift about churn until ")
    assert_one_line_error(
        cli("alerts", "silence", "drift", "-p", "shop", "--for", "soon", ok=False),
        "--for takes a duration like 30m",
    )
    assert cli("alerts", "resolve", str(row["id"])).stdout.startswith("resolved alert")


def test_rules_add_ls_rm(cli: Any) -> None:  # noqa: F811 - fixtures
    cli("projects", "create", "shop")
    out = cli(
        "alerts",
        "rules",
        "add",
        "slow",
        "-p",
        "shop",
        "--source",
        "latency",
        "--metric",
        "p99_ms",
        "--op",
        ">",
        "--threshold",
        "250",
        "--severity",
        "error",
        "--cooldown",
        "10m",
    )
    assert out.stdout.strip() == "rule slow: latency p99_ms > 250 -> error"
    (rule,) = as_json(cli("alerts", "rules", "ls", "-p", "shop", "--json"))
    assert (rule["name"], rule["threshold"], rule["cooldown_s"]) == ("slow", 250.0, 600.0)
    assert_one_line_error(
        cli(
            "alerts",
            "rules",
            "add",
            "x",
            "-p",
            "shop",
            "--source",
            "weather",
            "--metric",
            "m",
            "--op",
            ">",
            "--threshold",
            "1",
            ok=False,
        ),
        "source 'weather' is not one of",
    )
    assert cli("alerts", "rules", "rm", "slow", "-p", "shop").stdout.strip() == "removed rule slow"
    assert as_json(cli("alerts", "rules", "ls", "-p", "shop", "--json")) == []
    assert_one_line_error(
        cli("alerts", "rules", "rm", "slow", "-p", "shop", ok=False), "rule 'slow' does not exist"
    )


def test_webhooks_add_ls_test_rm(server: Any, cli: Any, cli_home: Any) -> None:  # noqa: F811 - fixtures
    cli("projects", "create", "shop")
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    assert_one_line_error(
        cli("alerts", "webhooks", "add", "ops", "gopher://x", "-p", "shop", ok=False),
        "must start with http:// or https://",
    )
    env = {
        "UNDERLAY_URL": server.url,
        "UNDERLAY_TOKEN": server.admin_token,
        "UNDERLAY_HOME": str(cli_home),
        "HOOK_KEY": "k" * 32,
    }
    out = cli(
        "alerts",
        "webhooks",
        "add",
        "ops",
        url,
        "-p",
        "shop",
        "--secret-env",
        "HOOK_KEY",
        "--kind",
        "drift",
        "--min-severity",
        "error",
        env=env,
    )
    assert out.stdout.strip() == f"webhook ops -> {url} (signed)"
    (hook,) = as_json(cli("alerts", "webhooks", "ls", "-p", "shop", "--json"))
    assert (hook["signed"], hook["kinds"], hook["min_severity"]) == (True, ["drift"], "error")
    assert "k" * 32 not in str(hook)
    down = cli("alerts", "webhooks", "test", "ops", "-p", "shop", "--wait", "3", ok=False)
    assert_one_line_error(down, "not delivered")
    receiver = Receiver(port)
    try:
        up = cli("alerts", "webhooks", "test", "ops", "-p", "shop", "--wait", "60")
        assert up.stdout.strip().endswith("delivered")
        assert {h["x-underlay-event"] for h, _ in receiver.posts} == {"test"}
    finally:
        receiver.close()
    assert (
        cli("alerts", "webhooks", "rm", "ops", "-p", "shop").stdout.strip() == "removed webhook ops"
    )

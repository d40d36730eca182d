"""``underlay alerts``: alerts, their rules, silences and webhooks."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from underlay.cli.common import Col, JsonOpt, ProjectOpt, client, project_of, show, when
from underlay.errors import InvalidInput, Unavailable
from underlay.logs import escape_control

alerts = typer.Typer(
    help="Alerts (drift, performance, rules, idle GPUs, budgets, anomalies), their rules, "
    "silences and webhooks.",
    no_args_is_help=True,
)
rules = typer.Typer(help="Alert rules: a figure, a comparison, a threshold.", no_args_is_help=True)
webhooks = typer.Typer(help="Where a project's alerts are posted.", no_args_is_help=True)
alerts.add_typer(rules, name="rules")
alerts.add_typer(webhooks, name="webhooks")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_of(text: str) -> float:
    """``90s``, ``15m``, ``2h``, ``7d`` (or plain seconds) in seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if found is None:
        raise InvalidInput(f"--for takes a duration like 30m, 2h or 7d; got {text[:40]!r}")
    return float(found[1]) * _UNITS[found[2] or "s"]


@alerts.command("ls")
def alerts_ls(
    project: Annotated[str | None, typer.Option("--project", "-p", help="One project.")] = None,
    resolved: Annotated[
        bool,
        typer.Option("--resolved", metavar="", help="Resolved alerts instead of open ones."),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Open alerts of your projects (every project for a global admin), newest first."""
    with client() as c:
        rows = c.list_alerts(project=project, resolved=resolved)
    cols = [
        Col("id", ident=True),
        Col("severity"),
        Col("kind"),
        Col("subject", ident=True),
        Col("count"),
        Col("source"),
        Col("message"),
        when("created_at", optional=True),
        when("last_seen", optional=True),
        when("resolved_at", optional=True),
    ]
    show(rows, cols, as_json=json_)


@alerts.command("resolve")
def alerts_resolve(alert_id: int, json_: JsonOpt = False) -> None:
    """Mark an alert resolved (members and admins of its project)."""
    with client() as c:
        alert = c.resolve_alert(alert_id)
    if json_:
        show(alert, [], as_json=True)
        return
    typer.echo(escape_control(f"resolved alert {alert.id}: {alert.subject}"))


@alerts.command("silence")
def alerts_silence(
    kind: Annotated[str, typer.Argument(help="The alert kind, e.g. drift or idle_gpu.")],
    for_: Annotated[str, typer.Option("--for", help="How long: 30m, 2h, 7d.")],
    project: ProjectOpt = None,
    subject: Annotated[str, typer.Option("--subject", help="Only alerts about this.")] = "",
    reason: Annotated[str, typer.Option("--reason", help="Why (kept with the silence).")] = "",
    json_: JsonOpt = False,
) -> None:
    """Record but do not deliver alerts of KIND for a while (they still show in ls)."""
    seconds = seconds_of(for_)
    with client() as c:
        silence = c.silence_alerts(
            project_of(project), kind, seconds=seconds, subject=subject, reason=reason
        )
    if json_:
        show(silence, [], as_json=True)
        return
    about = f" about {silence.subject}" if silence.subject else ""
    typer.echo(
        escape_control(f"silenced {silence.kind}{about} until {silence.until:%Y-%m-%d %H:%M} UTC")
    )


@rules.command("add")
def rules_add(
    name: Annotated[str, typer.Argument(help="The rule's name.")],
    source: Annotated[
        str, typer.Option("--source", help="drift, performance, latency, errors, cost, security.")
    ],
    metric: Annotated[str, typer.Option("--metric", help="e.g. p99_ms, share_drifted.")],
    comparison: Annotated[str, typer.Option("--op", help="> >= < <= == !=")],
    threshold: Annotated[float, typer.Option("--threshold", help="Compared with the figure.")],
    project: ProjectOpt = None,
    severity: Annotated[
        str, typer.Option("--severity", help="info, warning, error, critical.")
    ] = "warning",
    subject: Annotated[str, typer.Option("--subject", help="One subject only.")] = "",
    cooldown: Annotated[
        str, typer.Option("--cooldown", help="Quiet time after firing, e.g. 10m.")
    ] = "0",
    json_: JsonOpt = False,
) -> None:
    """Add a rule: raise an alert when METRIC of SOURCE compares true to THRESHOLD."""
    with client() as c:
        rule = c.add_alert_rule(
            project_of(project),
            name,
            source=source,
            metric=metric,
            comparison=comparison,
            threshold=threshold,
            severity=severity,
            subject=subject,
            cooldown_s=seconds_of(cooldown),
        )
    if json_:
        show(rule, [], as_json=True)
        return
    typer.echo(
        escape_control(
            f"rule {rule.name}: {rule.source} {rule.metric} {rule.comparison} "
            f"{rule.threshold:g} -> {rule.severity}"
        )
    )


@rules.command("ls")
def rules_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """The project's alert rules."""
    with client() as c:
        rows = c.alert_rules(project_of(project))
    cols = [
        Col("name", ident=True),
        Col("source"),
        Col("metric"),
        Col("comparison"),
        Col("threshold"),
        Col("severity"),
        Col("subject", ident=True),
        Col("cooldown_s"),
    ]
    show(rows, cols, as_json=json_)


@rules.command("rm")
def rules_rm(name: str, project: ProjectOpt = None) -> None:
    """Remove a rule."""
    with client() as c:
        c.remove_alert_rule(project_of(project), name)
    typer.echo(escape_control(f"removed rule {name}"))


@webhooks.command("add")
def webhooks_add(
    name: Annotated[str, typer.Argument(help="The webhook's name.")],
    url: Annotated[str, typer.Argument(help="http:// or https:// URL.")],
    project: ProjectOpt = None,
    secret_env: Annotated[
        str | None,
        typer.Option("--secret-env", help="Sign posts with the HMAC key in this variable."),
    ] = None,
    min_severity: Annotated[
        str, typer.Option("--min-severity", help="Least severity posted.")
    ] = "warning",
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="Only this kind (repeat).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Post the project's alerts to URL (signed when --secret-env names a set variable)."""
    import os

    secret = None
    if secret_env is not None:
        secret = os.environ.get(secret_env)
        if not secret:
            raise InvalidInput(f"--secret-env {secret_env}: that variable is not set")
    with client() as c:
        hook = c.add_webhook(
            project_of(project),
            name,
            url,
            secret=secret,
            min_severity=min_severity,
            kinds=kind or [],
        )
    if json_:
        show(hook, [], as_json=True)
        return
    signed = " (signed)" if hook.signed else ""
    typer.echo(escape_control(f"webhook {hook.name} -> {hook.url}{signed}"))


@webhooks.command("ls")
def webhooks_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """The project's webhooks and their deliveries by state."""
    with client() as c:
        rows = c.webhooks(project_of(project))
    cols = [
        Col("name", ident=True),
        Col("url", ident=True),
        Col("signed"),
        Col("min_severity"),
        Col("kinds"),
        Col("deliveries"),
    ]
    show(rows, cols, as_json=json_)


@webhooks.command("rm")
def webhooks_rm(name: str, project: ProjectOpt = None) -> None:
    """Remove a webhook (and its deliveries not yet made)."""
    with client() as c:
        c.remove_webhook(project_of(project), name)
    typer.echo(escape_control(f"removed webhook {name}"))


@webhooks.command("test")
def webhooks_test(
    name: str,
    project: ProjectOpt = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the answer.")] = 10.0,
    json_: JsonOpt = False,
) -> None:
    """Post a test delivery; fails (exit 1) unless the receiver answers 2xx within --wait."""
    with client() as c:
        row = c.test_webhook(project_of(project), name, wait_s=wait)
    if json_:
        show(row, [], as_json=True)
    elif row.state == "delivered":
        typer.echo(f"test delivery {row.id} delivered")
    if row.state != "delivered":
        why = row.last_error or f"no answer within {wait:g} s"
        raise Unavailable(f"test delivery {row.id} to webhook {name!r} not delivered: {why}")

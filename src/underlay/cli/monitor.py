"""``underlay monitor``: drift checks of a deployment against its reference, their stored
reports, and its performance from feedback."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from underlay.cli.common import JsonOpt, ProjectOpt, client, print_json, project_of

monitor = typer.Typer(
    help="Monitoring of deployments: drift against the training data, performance.",
    no_args_is_help=True,
)

DeploymentArg = Annotated[str, typer.Argument(metavar="DEPLOYMENT", help="The deployment.")]


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _window(window: dict[str, Any]) -> str:
    if "rows" in window:
        return f"last {window['rows']} rows"
    if window.get("last"):
        return f"last {window['last']}"
    return f"{window.get('since') or '...'} to {window.get('until') or 'now'}"


def _print_check(check: dict[str, Any]) -> None:
    from underlay.cli.common import Col, cell, print_table

    flagged = check.get("flagged") or []
    head = (
        f"deployment {check['deployment']} (model {check['model']} v{check['model_version']}) "
        f"against {check['reference']} ({check['reference_source']}): "
        f"{_window(check['window'])}, {check['rows']} rows"
    )
    typer.echo(head)
    if check["state"] == "too_few_rows":
        typer.echo(
            f"too few rows: {check['rows']} logged, {check['rows_reference']} in the reference; "
            f"a check needs {check['min_rows']} on each side (no scores reported)"
        )
    columns = [
        Col("feature", ident=True),
        Col("role", optional=True),
        Col("kind"),
        Col("method"),
        Col("score"),
        Col("threshold", optional=True),
        Col("drifted"),
        Col("missing", optional=True),
    ]
    cells = []
    for f in check["features"]:
        limit = f"p<{f['alpha']}" if f.get("alpha") is not None else _num(f.get("threshold"))
        missing = f"{f['missing_reference']:.1%} -> {f['missing_current']:.1%}"
        values = [
            f["name"],
            f["role"],
            f["kind"],
            f["method"],
            _num(f.get("score"), 4) if f["status"] == "ok" else "too few rows",
            limit,
            "yes" if f["drifted"] else "no",
            missing,
        ]
        cells.append([cell(v) for v in values])
    if cells:
        print_table(columns, cells)
    state = check["state"]
    if state == "drift":
        typer.echo(f"drift: {len(flagged)} flagged ({', '.join(flagged)}); report {check['id']}")
    elif state == "ok":
        typer.echo(f"ok: no column drifted; report {check['id']}")


@monitor.command("drift")
def drift(
    deployment: DeploymentArg,
    project: ProjectOpt = None,
    rows: Annotated[
        int | None, typer.Option("--rows", help="Check the last N logged rows (default 5000).")
    ] = None,
    last: Annotated[
        str | None, typer.Option("--last", help="Check the rows logged in the last 1h, 30m, 2d.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this ISO time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until this ISO time.")] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", metavar="TABLE@VERSION", help="Instead of lineage's."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="A reference column of labels to compare predictions to."),
    ] = None,
    column: Annotated[
        list[str] | None, typer.Option("--column", help="Compare only this feature (repeat).")
    ] = None,
    min_rows: Annotated[
        int | None, typer.Option("--min-rows", help="Rows needed on each side (default 1000).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Compare the deployment's recent traffic with the data its model was trained on
    (found through lineage): a score and a flag per feature; the report is stored."""
    with client() as c:
        check = c.check_drift(
            project_of(project),
            deployment,
            rows=rows,
            last=last,
            since=since,
            until=until,
            reference=reference,
            target=target,
            columns=column or None,
            min_rows=min_rows,
        )
    if json_:
        print_json(check)
        return
    _print_check(check)


@monitor.command("reports")
def reports(
    deployment: DeploymentArg,
    project: ProjectOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 20,
    json_: JsonOpt = False,
) -> None:
    """The deployment's stored drift reports, newest first."""
    from underlay.cli.common import Col, cell, print_table
    from underlay.cli.units import timestamp

    with client() as c:
        found = c.drift_reports(project_of(project), deployment, limit=limit)
    if json_:
        print_json(found)
        return
    columns = [
        Col("id", ident=True),
        Col("created", ident=True),
        Col("reference", ident=True),
        Col("window"),
        Col("rows"),
        Col("state"),
        Col("flagged"),
        Col("actor", optional=True),
    ]
    cells = [
        [
            cell(v)
            for v in (
                r["id"],
                timestamp(r.get("created_at")),
                r["reference"],
                _window(r["window"]),
                r["rows"],
                r["state"],
                ", ".join(r.get("flagged") or []),
                r.get("actor"),
            )
        ]
        for r in found
    ]
    print_table(columns, cells)


_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "f1_macro",
    "roc_auc",
    "calibration_error",
    "rmse",
    "mae",
)


@monitor.command("performance")
def performance(
    deployment: DeploymentArg,
    project: ProjectOpt = None,
    task: Annotated[
        str, typer.Option("--task", help="classification or regression.")
    ] = "classification",
    window_s: Annotated[
        float | None, typer.Option("--window-s", help="One row per window of this many seconds.")
    ] = None,
    slice_by: Annotated[
        str | None, typer.Option("--slice-by", help="One row per value of this log column.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="From this ISO time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Until this ISO time.")] = None,
    min_rows: Annotated[
        int | None, typer.Option("--min-rows", help="Labelled rows needed per row (default 30).")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """The deployment's performance from the labels sent as feedback (overall, per window,
    per slice), with its request, error and latency counters."""
    with client() as c:
        found = c.deployment_performance(
            project_of(project),
            deployment,
            task=task,
            window_s=window_s,
            slice_by=slice_by,
            since=since,
            until=until,
            min_rows=min_rows,
        )
    if json_:
        print_json(found)
        return
    _print_performance(found)


def _print_performance(found: dict[str, Any]) -> None:
    import datetime as dt

    from underlay.cli.common import Col, cell, print_table

    groups: list[tuple[str, dict[str, Any]]] = [("overall", found["overall"])]
    for w in found.get("windows") or []:
        start = dt.datetime.fromtimestamp(w["start"], dt.UTC).strftime("%Y-%m-%d %H:%M")
        groups.append((f"from {start}", w))
    for s in found.get("slices") or []:
        groups.append((f"{found.get('slice_by')}={s.get('value')}", s))
    shown = [m for m in _METRICS if any(m in g.get("metrics", {}) for _, g in groups)]
    columns = [Col("rows of", ident=True), Col("labelled"), *(Col(m) for m in shown)]
    columns.append(Col("note", optional=True))
    cells = []
    for name, group in groups:
        metrics = group.get("metrics") or {}
        note = group.get("insufficient") or "; ".join(
            f"{k}: {v}" for k, v in (group.get("notes") or {}).items()
        )
        values = [name, group["rows"], *(_num(metrics.get(m), 4) for m in shown), note]
        cells.append([cell(v) for v in values])
    print_table(columns, cells)
    serving = found.get("serving") or {}
    latency = serving.get("latency_ms") or {}
    rate = serving.get("error_rate")
    typer.echo(
        f"serving (this server process): {serving.get('requests', 0)} requests, "
        f"{serving.get('errors', 0)} errors"
        + ("" if rate is None else f" ({rate:.2%})")
        + ("" if latency.get("p50") is None else f", p50 {latency['p50']:.1f} ms")
        + ("" if latency.get("p99") is None else f", p99 {latency['p99']:.1f} ms")
    )


from underlay.cli import monitor_loop  # noqa: E402  - the retraining loop's commands

monitor_loop.register(monitor)

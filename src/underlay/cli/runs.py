"""``underlay runs`` and ``underlay experiments``: tracked training runs of a project."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from underlay.cli.common import (
    Col,
    JsonOpt,
    ProjectOpt,
    YesOpt,
    client,
    delete_in_project,
    print_json,
    project_of,
    show,
    when,
)

runs = typer.Typer(
    help="Tracked runs: search, show, compare, metric history.", no_args_is_help=True
)
experiments = typer.Typer(help="Experiments: named groups of runs.", no_args_is_help=True)

RunArg = Annotated[int, typer.Argument(min=1, help="The run's id.")]


def _metrics(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v['value']:.6g}" for k, v in list(row["metrics"].items())[:6])


def _params(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in list(row["params"].items())[:6])


@runs.command("ls")
def runs_ls(
    project: ProjectOpt = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Only this experiment's runs.")
    ] = None,
    filter_expr: Annotated[
        str,
        typer.Option(
            "--filter",
            help="A search expression: \"metrics.acc > 0.9 and params.lr = '0.01'\".",
        ),
    ] = "",
    order_by: Annotated[
        str, typer.Option("--order-by", help="Sort: 'metrics.acc desc' (default newest first).")
    ] = "",
    status: Annotated[str | None, typer.Option(help="running, finished, failed or killed.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    json_: JsonOpt = False,
) -> None:
    """Search the project's runs (see docs/ml.md for the expression grammar)."""
    with client() as c:
        rows = c.list_runs(
            project_of(project),
            experiment=experiment,
            status=status,
            filter=filter_expr,
            order_by=order_by,
            limit=limit,
        )
    show(
        rows,
        [
            Col("id", ident=True),
            Col("experiment", ident=True),
            "status",
            Col("metrics", fmt=_metrics),
            Col("params", fmt=_params, optional=True),
            when("started_at", optional=True),
        ],
        as_json=json_,
    )


@runs.command("show")
def runs_show(run: RunArg, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """A run: status, params, tags, latest metrics, inputs and artifacts."""
    with client() as c:
        found = c.read_run(project_of(project), run)
        artifacts = c.list_artifacts(project_of(project), run)
    if json_:
        payload = found.model_dump(mode="json")
        payload["artifacts"] = [a.model_dump(mode="json") for a in artifacts]
        print_json(payload)
        return
    typer.echo(f"run {found.id} ({found.experiment}) {found.status}")
    if found.error:
        typer.echo(f"  error: {found.error}")
    for title, values in (("params", found.params), ("tags", found.tags)):
        for key, value in values.items():
            typer.echo(f"  {title[:-1]} {key} = {value}")
    for key, point in found.metrics.items():
        typer.echo(f"  metric {key} = {point.value:.6g} (step {point.step})")
    for ref in found.inputs:
        typer.echo(f"  input {ref.kind} {ref.name}@{ref.version}")
    for art in artifacts:
        typer.echo(f"  artifact {art.path} ({art.size} bytes, sha256:{art.digest[:12]})")


@runs.command("history")
def runs_history(
    run: RunArg,
    key: Annotated[str, typer.Argument(help="The metric key.")],
    project: ProjectOpt = None,
    max_points: Annotated[
        int | None, typer.Option("--max-points", min=1, help="Downsample to this many.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """A metric's points in step order."""
    with client() as c:
        history = c.metric_history(project_of(project), run, key, max_points=max_points)
    if json_:
        print(history.model_dump_json())
        return
    typer.echo(f"{'step':>10}  value")
    for step, value in zip(history.step, history.value, strict=True):
        typer.echo(f"{step:>10}  {value:.6g}")


@runs.command("compare")
def runs_compare(
    run_ids: Annotated[list[int], typer.Argument(help="Two or more run ids.")],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Runs side by side: each param and latest metric of any of them."""
    with client() as c:
        result = c.compare_runs(project_of(project), run_ids)
    if json_:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    header = ["key", *(f"run {i}" for i in result.runs)]
    lines = [header]
    for key, values in result.params.items():
        lines.append([f"params.{key}", *("" if v is None else v for v in values)])
    for key, numbers in result.metrics.items():
        lines.append([f"metrics.{key}", *("" if v is None else f"{v:.6g}" for v in numbers)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        typer.echo("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)))


@runs.command("rm")
def runs_rm(run: RunArg, project: ProjectOpt = None, yes: YesOpt = False) -> None:
    """Delete a run with its metrics and artifacts (blobs nothing else holds go too)."""
    name = delete_in_project("run", str(run), project, yes, "its metrics and artifacts")
    with client() as c:
        c.delete_run(name, run)
    typer.echo(f"deleted run {run}")


@experiments.command("ls")
def experiments_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """The project's experiments with their number of runs."""
    with client() as c:
        rows = c.list_experiments(project_of(project))
    show(rows, [Col("name", ident=True), "runs", when("created_at"), "description"], as_json=json_)

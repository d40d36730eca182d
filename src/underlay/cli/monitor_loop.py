"""``underlay monitor loop|policy|runs|approve``: the retraining loop of a deployment (see
docs/monitoring.md, "The retraining loop"). Registered on the ``monitor`` group."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from underlay.cli.common import Col, JsonOpt, ProjectOpt, client, print_json, project_of, show

if TYPE_CHECKING:
    from underlay.monitoring.loop_schemas import RunRead

policy = typer.Typer(help="A deployment's retrain policy.", no_args_is_help=True)

RUN_COLUMNS: list[str | Col] = [
    "id",
    "state",
    "mode",
    "champion_version",
    "challenger_version",
    "table_version",
    "training_job_id",
    "reason",
]


def _drift(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise typer.BadParameter(f"{path}: not a drift report's JSON ({error})") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path}: a drift report is a JSON object", param_hint="--drift")
    return data


DriftOpt = Annotated[
    Path | None,
    typer.Option(
        "--drift",
        help="A drift report's JSON (as 'monitor drift --json' prints) to trigger on, "
        "instead of the newest stored one.",
    ),
]


def loop(
    deployment: str,
    project: ProjectOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="Say what would happen; touch nothing.")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why (a start by hand).")] = "",
    drift: DriftOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Start a retrain run of DEPLOYMENT now (--dry-run: print the plan, step by step)."""
    summary = _drift(drift)
    with client() as c:
        if dry_run:
            plan = c.retrain_plan(project_of(project), deployment, summary)
        else:
            run = c.start_retrain(project_of(project), deployment, reason=reason, drift=summary)
    if dry_run:
        if json_:
            print_json(plan)
            return
        typer.echo(f"deployment {deployment} ({plan['mode']}): would start: {plan['would_start']}")
        if plan.get("blocked"):
            typer.echo(f"  blocked: {plan['blocked']}")
        for item in plan["steps"]:
            extra = f" ({item['reason']})" if item.get("reason") else ""
            typer.echo(f"  {item['step']}: {item['would']}{extra}")
        return
    _run_out(run, json_, f"retrain run {run.id} of {deployment}: {run.state}")


def _run_out(run: RunRead, as_json: bool, line: str) -> None:
    typer.echo(run.model_dump_json(indent=2) if as_json else line)


def runs(deployment: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """The deployment's retrain runs, newest first, with their state and why."""
    with client() as c:
        rows = c.retrain_runs(project_of(project), deployment)
    show(rows, RUN_COLUMNS, as_json=json_)


def run_show(run_id: int, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One retrain run, step by step."""
    with client() as c:
        run = c.retrain_run(project_of(project), run_id)
    if json_:
        typer.echo(run.model_dump_json(indent=2))
        return
    typer.echo(f"retrain run {run.id} of {run.deployment} ({run.mode}): {run.state}")
    for item in run.steps:
        typer.echo(f"  {item['at'][:19]} {item['state']}: {item.get('detail', '')}")


def approve(run_id: int, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Approve a run waiting in awaiting_approval: its challenger's canary starts."""
    with client() as c:
        run = c.approve_retrain(project_of(project), run_id)
    _run_out(run, json_, f"retrain run {run.id}: {run.state}")


def abandon(run_id: int, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Stop a run (a canary it started is rolled back; the champion stays)."""
    with client() as c:
        run = c.abandon_retrain(project_of(project), run_id)
    _run_out(run, json_, f"retrain run {run.id}: {run.state}")


@policy.command("set")
def policy_set(
    deployment: str,
    file: Annotated[
        Path, typer.Option("--pipeline-file", help="The training ML pipeline's .py file.")
    ],
    project: ProjectOpt = None,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Which @pipeline, if it declares several.")
    ] = None,
    table: Annotated[
        str | None, typer.Option(help="Training table (default: the deployment's reference).")
    ] = None,
    artifact: Annotated[str, typer.Option(help="Where the run logs the model.")] = "model",
    task: Annotated[str, typer.Option(help="classification or regression.")] = "classification",
    drift_share: Annotated[float, typer.Option("--drift-share")] = 0.2,
    metric_floor: Annotated[float | None, typer.Option("--metric-floor")] = None,
    margin: Annotated[float, typer.Option(help="How much better the challenger must be.")] = 0.01,
    holdout_share: Annotated[float, typer.Option("--holdout-share")] = 0.5,
    min_rows: Annotated[int, typer.Option("--min-rows")] = 30,
    canary_weight: Annotated[float, typer.Option("--canary-weight")] = 0.2,
    canary_window_s: Annotated[float, typer.Option("--canary-window-s")] = 60.0,
    canary_min_requests: Annotated[int, typer.Option("--canary-min-requests")] = 20,
    mode: Annotated[str, typer.Option(help="auto, approval or dry-run.")] = "auto",
    cooldown_s: Annotated[float, typer.Option("--cooldown-s")] = 3600.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Set DEPLOYMENT's retrain policy: the pipeline's folder is uploaded, and the pipeline
    checked here first (an unknown one writes nothing)."""
    from underlay.cli.compute import _upload_workdir
    from underlay.ml.pipelines.loader import find

    found = find(file, pipeline)
    if found is None:
        raise typer.BadParameter(f"{file.name} declares no @pipeline", param_hint="--pipeline-file")
    body = {
        "pipeline": found.name,
        "pipeline_file": file.name,
        "table": table,
        "artifact": artifact,
        "task": task,
        "drift_share": drift_share,
        "metric_floor": metric_floor,
        "margin": margin,
        "holdout_share": holdout_share,
        "min_rows": min_rows,
        "canary_weight": canary_weight,
        "canary_window_s": canary_window_s,
        "canary_min_requests": canary_min_requests,
        "mode": mode,
        "cooldown_s": cooldown_s,
    }
    _check(body)
    with client() as c:
        name = project_of(project)
        body["workdir_digest"] = _upload_workdir(c, name, file.resolve().parent, 100.0, quiet)
        result = c.set_retrain_policy(name, deployment, **body)
    if json_:
        typer.echo(result.model_dump_json(indent=2))
        return
    typer.echo(f"deployment {deployment}: retrain policy set ({result.mode}, {result.pipeline})")


def _check(body: dict[str, Any]) -> None:
    """Refuse a bad policy before anything is uploaded (the server checks it again)."""
    from pydantic import ValidationError

    from underlay.monitoring.loop_schemas import PolicySet

    try:
        PolicySet.model_validate({**body, "workdir_digest": "0" * 64})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}", param_hint=f"--{where}") from None


@policy.command("show")
def policy_show(deployment: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Show DEPLOYMENT's retrain policy."""
    with client() as c:
        found = c.retrain_policy(project_of(project), deployment)
    if json_:
        typer.echo(found.model_dump_json(indent=2))
        return
    show(found, list(type(found).model_fields), as_json=False)


def register(group: typer.Typer) -> None:
    """Add the loop's commands to the ``monitor`` group."""
    group.command("loop")(loop)
    group.command("runs")(runs)
    group.command("run")(run_show)
    group.command("approve")(approve)
    group.command("abandon")(abandon)
    group.add_typer(policy, name="policy")

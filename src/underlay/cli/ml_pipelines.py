"""The ML half of ``underlay pipelines``: run a ``@pipeline`` file (steps as jobs, or here),
list runs (``ls``), show one (``show mN``), print its steps' job logs (``logs``), and the
hidden ``step`` command each step's job runs.

ML runs are named ``m<ID>`` (``m3``), so they never clash with ETL run ids, which ``show``
still takes as plain numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from underlay.cli.common import Col, JsonOpt, ProjectOpt, client, project_of, show, when
from underlay.logs import escape_control

if TYPE_CHECKING:
    from underlay.client import Client
    from underlay.ml.pipelines.dsl import Pipeline
    from underlay.ml.pipelines.schemas import RunRead, StepRead

EXIT_FAILED = 1
EXIT_TIMED_OUT = 124
_REF = re.compile(r"^m([0-9]{1,10})$")


def ml_ref(text: str) -> int | None:
    """The id in ``m3``; None for anything else."""
    match = _REF.fullmatch(text.strip())
    return int(match.group(1)) if match else None


def parse_params(values: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs; a VALUE that parses as JSON is that (``3``, ``0.1``, ``[1,2]``),
    else the string."""
    params: dict[str, Any] = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name.isidentifier():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        try:
            params[name] = json.loads(raw)
        except ValueError:
            params[name] = raw
    return params


def run_ml(
    file: Path,
    spec: Pipeline,
    project: str,
    *,
    local: bool,
    params: dict[str, Any],
    env: dict[str, str],
    timeout: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Drive the pipeline to its end and print the report; exit 1 when it failed."""
    from underlay.errors import Unavailable
    from underlay.ml.pipelines.runner import Driver

    def say(line: str) -> None:
        if not quiet:
            typer.echo(escape_control(line), err=True)

    with client() as c:
        digest = None
        if not local:
            from underlay.cli.compute import _upload_workdir

            digest = _upload_workdir(c, project, file.resolve().parent, 100.0, quiet)
        driver = Driver(c, project, spec, file=file, local=local, workdir_digest=digest)
        try:
            record = driver.run(params, job_env=env, on_event=say, timeout_s=timeout)
        except Unavailable as exc:
            if not exc.extra.get("timed_out"):
                raise
            typer.echo(f"error: timed out: {exc}; run m{driver.run_id} failed", err=True)
            raise typer.Exit(EXIT_TIMED_OUT) from None
    report(record, as_json)


def report(record: RunRead, as_json: bool) -> None:
    if as_json:
        show(record, [], as_json=True)
    else:
        for line in report_lines(record):
            typer.echo(escape_control(line))
    if record.status == "failed":
        message = escape_control(record.error)
        typer.echo(
            f"error: pipeline {record.pipeline} run m{record.id} failed: {message}", err=True
        )
        raise typer.Exit(EXIT_FAILED)


def _step_line(step: StepRead) -> str:
    parts = [step.status]
    if step.status == "cached":
        parts = [f"cached, skipped (outputs of run m{step.cached_from_run})"]
    if step.job_id:
        parts.append(f"job {step.job_id}")
    if step.attempts > 1:
        parts.append(f"{step.attempts} attempts")
    if step.duration_s is not None and step.status != "cached":
        parts.append(f"{step.duration_s:.2f} s")
    if step.metrics:
        parts.append(", ".join(f"{k}={v:g}" for k, v in sorted(step.metrics.items())[:4]))
    line = f"  step {step.key}: " + ", ".join(parts)
    if step.error:
        line += f": {step.error}"
    return line


def report_lines(record: RunRead) -> list[str]:
    """A run's report as text: a line per step call, one per sweep."""
    took = f" in {record.duration_s:.2f} s" if record.duration_s is not None else ""
    lines = [f"pipeline {record.pipeline} run m{record.id} ({record.mode}): {record.status}{took}"]
    if record.params:
        lines.append("  params: " + json.dumps(record.params, sort_keys=True))
    lines.extend(_step_line(step) for step in record.steps)
    for sweep in record.sweeps:
        trials = len(sweep["trials"])
        if sweep["best"] is None:
            lines.append(f"  sweep {sweep['name']}: no best of {trials} trials ({sweep['metric']})")
        else:
            lines.append(
                f"  sweep {sweep['name']}: best {sweep['best']} ({sweep['metric']}="
                f"{sweep['best_value']:g}, {sweep['mode']}) of {trials} {sweep['kind']} trials"
            )
    return lines


RUN_COLUMNS = [
    Col("id", fmt=lambda r: f"m{r['id']}", ident=True),
    Col("pipeline", ident=True),
    Col("mode"),
    Col("status"),
    Col("duration_s", header="seconds", fmt=lambda r: f"{r['duration_s'] or 0:.2f}", optional=True),
    when("started_at", optional=True),
]


def ls(c: Client, project: str, name: str | None, limit: int, as_json: bool) -> None:
    show(c.list_ml_runs(project, name, limit=limit), RUN_COLUMNS, as_json=as_json)


def show_run(c: Client, project: str, run_id: int, as_json: bool) -> None:
    record = c.read_ml_run(project, run_id)
    if as_json:
        show(record, [], as_json=True)
        return
    for line in report_lines(record):
        typer.echo(escape_control(line))
    if record.error:
        typer.echo(escape_control(f"  error: {record.error}"))


def logs(c: Client, project: str, run_id: int, key: str | None) -> None:
    """Each step's job log under a header (or one step's); in-process steps have none."""
    from underlay.errors import NotFound

    record = c.read_ml_run(project, run_id)
    steps = [s for s in record.steps if key is None or s.key == key]
    if key is not None and not steps:
        raise NotFound(f"run m{run_id} has no step {key!r}")
    import sys

    for step in steps:
        if step.job_id is None:
            why = "cached" if step.status == "cached" else f"{step.status}, ran in-process"
            typer.echo(escape_control(f"== step {step.key}: no job ({why})"))
            if step.error:
                typer.echo(escape_control(step.error))
            continue
        typer.echo(escape_control(f"== step {step.key} (job {step.job_id}, {step.status})"))
        sys.stdout.flush()
        for chunk in c.job_logs(project, step.job_id):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()


def step_job(file: Path, project: str, run_id: int, key: str) -> None:
    """The body of a step's job."""
    from underlay.ml.pipelines.runner import run_step_job

    with client() as c:
        code = run_step_job(c, project, file, run_id, key)
    if code:
        raise typer.Exit(code)


def logs_command(
    run: Annotated[str, typer.Argument(help="The ML run (m3, as ls shows it).")],
    step: Annotated[str | None, typer.Argument(help="Only this step (train, train.0).")] = None,
    project: ProjectOpt = None,
) -> None:
    """Print the job log of each step of an ML pipeline run (every attempt)."""
    run_id = ml_ref(run) or (int(run) if run.isdigit() else None)
    if run_id is None:
        raise typer.BadParameter(f"{run!r} is not a run like m3", param_hint="RUN")
    with client() as c:
        logs(c, project_of(project), run_id, step)


def ls_command(
    name: Annotated[str | None, typer.Argument(help="Only this pipeline's runs.")] = None,
    project: ProjectOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 100,
    json_: JsonOpt = False,
) -> None:
    """List a project's ML pipeline runs, newest first (ETL runs: pipelines runs)."""
    with client() as c:
        ls(c, project_of(project), name, limit, json_)


def step_command(
    file: Annotated[Path, typer.Argument(help="The pipeline's file (in the job's folder).")],
    run: Annotated[int, typer.Option("--run", help="The run's id.")],
    key: Annotated[str, typer.Option("--key", help="The step call to run.")],
    project: ProjectOpt = None,
) -> None:
    """Run one step call of an ML pipeline run (what each step's job runs)."""
    step_job(file, project_of(project), run, key)

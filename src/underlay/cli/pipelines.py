"""``underlay pipelines``: run an ETL pipeline (here, or as a job) and read its runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from underlay.cli.common import Col, JsonOpt, ProjectOpt, client, project_of, show, when
from underlay.logs import escape_control

if TYPE_CHECKING:
    from underlay.client import Client
    from underlay.data.schemas import PipelineRunRead

pipelines = typer.Typer(
    help="ETL pipelines (sources -> SQL or Python transforms -> a table) and ML pipelines "
    "(@step functions run as jobs, cached, with sweeps).",
    no_args_is_help=True,
)

EXIT_FAILED = 1
EXIT_TIMED_OUT = 124


@pipelines.command("run")
def pipelines_run(
    file: Annotated[Path, typer.Argument(help="The pipeline: a .yaml or .py file.")],
    project: ProjectOpt = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-P", help="NAME=VALUE for an ML pipeline's parameters."),
    ] = None,
    pipeline_name: Annotated[
        str | None,
        typer.Option("--pipeline", help="Which ML pipeline, when the file declares several."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", metavar="", help="Run it in this process, not as a job.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", metavar="", help="Wait for the job and print the report.")
    ] = False,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE for the job.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", metavar="", help="No progress bars.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run a pipeline. An ETL pipeline (YAML, or .py defining `pipeline = Pipeline(...)`)
    runs as one job on the scheduler without --local (its folder is the job's working folder)
    and the job id is printed; --wait waits and prints the report. An ML pipeline (.py with
    a @pipeline function) runs each step as a job (--local: in this process), skipping steps
    whose outputs are cached, and prints the report when it ends. Exits 1 when the run
    failed, 124 when --timeout passed first (an ETL job goes on; ML step jobs are cancelled)."""
    from underlay.data.pipelines import load

    if file.suffix == ".py":
        from underlay.ml.pipelines.loader import find

        ml_spec = find(file, pipeline_name)
        if ml_spec is not None:
            from underlay.cli.compute import _pairs
            from underlay.cli.ml_pipelines import parse_params, run_ml

            run_ml(
                file,
                ml_spec,
                project_of(project),
                local=local,
                params=parse_params(param or []),
                env=dict(_pairs(env or [], "--env")),
                timeout=timeout,
                quiet=quiet,
                as_json=json_,
            )
            return
    if param or pipeline_name:
        raise typer.BadParameter("only an ML pipeline takes them", param_hint="--param/--pipeline")
    spec = load(file)  # a spec error stops here, before anything is sent
    queue = project_of(project)
    with client() as c:
        if local:
            _stop_on_sigterm()
            record = c.run_pipeline(queue, spec)
        else:
            job_id = _submit(c, queue, file, spec.name, env or [], quiet)
            if not wait:
                typer.echo(job_id)
                return
            record = _wait(c, queue, job_id, timeout)
    _report(record, json_)


def _stop_on_sigterm() -> None:
    """A job that is cancelled or runs out of time gets SIGTERM first: turn it into an
    interruption, so the run is recorded as failed before the process ends."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)


def _submit(c: Client, project: str, file: Path, name: str, env: list[str], quiet: bool) -> int:
    from underlay.cli.compute import _pairs, _upload_workdir

    folder = file.resolve().parent
    digest = _upload_workdir(c, project, folder, 100.0, quiet)
    command = ["underlay", "pipelines", "run", "--local", file.name, "-p", project]
    job = c.submit_job(
        project,
        command,
        name=f"pipeline-{name}"[:63],
        env=dict(_pairs(env, "--env")),
        workdir_digest=digest,
    )
    return job.id


def _wait(c: Client, project: str, job_id: int, timeout: float | None) -> PipelineRunRead:
    from underlay.errors import NotFound, Unavailable

    try:
        job = c.wait_job(project, job_id, timeout_s=timeout)
    except Unavailable as exc:
        if not exc.extra.get("timed_out"):
            raise
        typer.echo(f"error: timed out: {exc}; job {job_id} goes on", err=True)
        raise typer.Exit(EXIT_TIMED_OUT) from None
    runs = c.list_pipeline_runs(project, job_id=job_id, limit=1)
    if not runs:
        raise NotFound(
            f"job {job_id} ended ({job.state}: {job.reason or 'no reason given'}) without "
            f"recording a pipeline run; see `underlay jobs logs {job_id}`"
        )
    return runs[0]


def _report(record: PipelineRunRead, as_json: bool) -> None:
    if as_json:
        show(record, [], as_json=True)
    else:
        for line in report_lines(record):
            typer.echo(escape_control(line))
    if record.status == "failed":
        message = escape_control(record.error)
        typer.echo(f"error: pipeline {record.pipeline} run {record.id} failed: {message}", err=True)
        raise typer.Exit(EXIT_FAILED)


def report_lines(record: PipelineRunRead) -> list[str]:
    """The run's report as text."""
    took = f" in {record.duration_s:.2f} s" if record.duration_s is not None else ""
    job = f" (job {record.job_id})" if record.job_id else ""
    lines = [f"pipeline {record.pipeline} run {record.id}{job}: {record.status}{took}"]
    lines.append("  inputs: " + ", ".join(f"{i.table}@{i.version}" for i in record.inputs))
    output = record.output_table
    if record.output_version is not None:
        output += f"@{record.output_version}"
    lines.append(
        f"  output: {output} (rows in {record.rows_in}, out {record.rows_out}, rejected "
        f"{record.rows_rejected}, quarantined {record.rows_quarantined})"
    )
    for step in record.steps:
        rejected = f", {step.rows_rejected} rejected" if step.rows_rejected else ""
        lines.append(f"  step {step.name} ({step.kind}): {step.rows_out} rows{rejected}")
    return lines


RUN_COLUMNS = [
    Col("id", ident=True),
    Col("pipeline", ident=True),
    Col("status"),
    Col(
        "output",
        fmt=lambda r: (
            r["output_table"]
            + (f"@{r['output_version']}" if r["output_version"] is not None else "")
        ),
        ident=True,
    ),
    Col("rows_in", optional=True),
    Col("rows_out", optional=True),
    Col("rows_rejected", optional=True),
    Col("job_id", fmt=lambda r: str(r["job_id"] or "-"), optional=True),
    when("started_at", optional=True),
]


@pipelines.command("runs")
def pipelines_runs(
    name: Annotated[str | None, typer.Argument(help="Only this pipeline's runs.")] = None,
    project: ProjectOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 100,
    json_: JsonOpt = False,
) -> None:
    """List a project's pipeline runs, newest first."""
    with client() as c:
        rows = c.list_pipeline_runs(project_of(project), name, limit=limit)
    show(rows, RUN_COLUMNS, as_json=json_)


@pipelines.command("show")
def pipelines_show(
    run: Annotated[
        str, typer.Argument(help="An ETL run's id (pipelines runs), or an ML run (m3, from ls).")
    ],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Print a run's report: an ETL run's inputs, output version, rows, steps and error; an
    ML run's step calls (cached, jobs, attempts, metrics) and sweeps."""
    from underlay.cli.ml_pipelines import ml_ref, show_run

    ml_id = ml_ref(run)
    if ml_id is not None:
        with client() as c:
            show_run(c, project_of(project), ml_id, json_)
        return
    if not run.isdigit() or len(run) > 10:
        raise typer.BadParameter(f"{run!r} is not a run id (3) or an ML run (m3)", param_hint="RUN")
    run_id = int(run)
    with client() as c:
        record = c.read_pipeline_run(project_of(project), run_id)
    if json_:
        show(record, [], as_json=True)
        return
    for line in report_lines(record):
        typer.echo(escape_control(line))
    if record.error:
        typer.echo(escape_control(f"  error: {record.error}"))


def _register_ml_commands() -> None:
    from underlay.cli import ml_pipelines as ml

    pipelines.command("ls")(ml.ls_command)
    pipelines.command("logs")(ml.logs_command)
    pipelines.command("step", hidden=True)(ml.step_command)


_register_ml_commands()

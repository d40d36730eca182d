"""``underlay nodes``, ``jobs``, ``quotas``, ``budget``, ``usage`` and ``agent``."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from underlay.cli import common
from underlay.cli.common import (
    Col,
    cell,
    choices,
    client,
    print_json,
    print_table,
    project_of,
    show,
)
from underlay.logs import escape_control

if TYPE_CHECKING:
    from underlay.client import Client
    from underlay.compute.schemas import JobRead

# the one spelling lives in cli/common.py; these names stay importable from here as well
JsonOpt = common.JsonOpt
ProjectOpt = common.ProjectOpt

# job ids are global: -p on a job's command is optional, and refused if it names another project
JobProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project", "-p", help="Optional (job ids are global): refused if not the job's project."
    ),
]

nodes = typer.Typer(help="The fleet: nodes and their accelerators.", no_args_is_help=True)
jobs = typer.Typer(help="Jobs: submit, watch, cancel.", no_args_is_help=True)
quotas = typer.Typer(help="Guaranteed accelerator quotas (global admins).", no_args_is_help=True)
budget = typer.Typer(help="A project's monthly budget.", no_args_is_help=True)


@nodes.command("ls")
def nodes_ls(json_: JsonOpt = False) -> None:
    """Nodes, their status, and each accelerator (simulated ones are marked)."""
    with client() as c:
        fleet = c.list_nodes()
    if json_:
        show(fleet, [], as_json=True)
        return
    from rich.text import Text

    from underlay.cli import units

    cols = [
        Col("node", ident=True),
        Col("status"),
        Col("isolation"),
        Col("CPUs", optional=True),
        Col("memory", optional=True),
        Col("accelerators"),
    ]
    rows = []
    for node in fleet:
        accs = [
            f"{a.index}:{a.type}{' (simulated)' if a.simulated else ''}"
            f"{'' if a.healthy else ' UNHEALTHY: ' + a.health_reason} {a.utilization:.0%}"
            for a in node.accelerators
        ]
        status = node.status + (f" ({node.status_reason})" if node.status_reason else "")
        isolation = node.isolation if node.isolation != "none" else "NOT ISOLATED"
        rows.append(
            [
                cell(node.name),
                cell(status),
                cell(isolation),
                Text(f"{node.cpu_milli / 1000:g}"),
                Text(units.size(node.memory_mib * 1024**2)),
                Text("\n").join(cell(a) for a in accs) or Text("-"),
            ]
        )
    print_table(cols, rows)


@nodes.command("cordon")
def nodes_cordon(
    name: str, reason: Annotated[str, typer.Option(help="Why.")] = "maintenance"
) -> None:
    """Keep new work off a node."""
    with client() as c:
        c.cordon(name, reason)
    typer.echo(f"cordoned {name}")


@nodes.command("token")
def nodes_token(name: str, json_: JsonOpt = False) -> None:
    """Create an agent token for node NAME (global admins): it can do nothing but speak for
    that node. Printed once; give it to 'underlay agent --token'."""
    with client() as c:
        created = c.create_agent_token(name)
    if json_:
        show(created, [], as_json=True)
        return
    typer.echo(created.token)


@nodes.command("uncordon")
def nodes_uncordon(name: str) -> None:
    """Let new work onto a node again."""
    with client() as c:
        c.uncordon(name)
    typer.echo(f"uncordoned {name}")


def _upload_workdir(c: Client, project: str, path: Path, warn_mb: float, quiet: bool) -> str:
    """Pack ``path`` (less ``.underlayignore``) and upload it with progress; its digest."""
    from underlay.cli import workdir
    from underlay.cli.progress import byte_bar, step_bar

    if not path.is_dir():
        raise typer.BadParameter(f"{path} is not a folder", param_hint="--workdir")
    selection = workdir.select(path)
    if selection.excluded:
        typer.echo(
            f"workdir: left out {selection.excluded} path(s) "
            f"({workdir.IGNORE_FILE}, .git/.venv/__pycache__, links out of the folder)",
            err=True,
        )
    warning = workdir.size_warning(selection, warn_mb)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    with step_bar("pack workdir", len(selection.paths), quiet=quiet) as step:
        data = workdir.pack(selection, step)
    with byte_bar("upload workdir", len(data), quiet=quiet) as sent:
        blob = c.upload_blob(
            project, data, name="workdir.tar.gz", media_type="application/gzip", progress=sent
        )
    return blob.digest


@jobs.command("submit")
def jobs_submit(
    command: Annotated[list[str], typer.Argument(help="The command, after --.")],
    project: ProjectOpt = None,
    name: Annotated[str, typer.Option(help="A label.")] = "",
    cpus: Annotated[float, typer.Option(help="CPUs.")] = 1.0,
    memory: Annotated[int, typer.Option(help="Memory in MiB.")] = 512,
    gpus: Annotated[int, typer.Option(help="Whole GPUs.")] = 0,
    gpu_fraction: Annotated[float | None, typer.Option(help="A share of one GPU.")] = None,
    gpu_type: Annotated[str | None, typer.Option(help="Accelerator type.")] = None,
    priority: Annotated[str, typer.Option(help="low, normal or high.")] = "normal",
    deferrable: Annotated[
        bool, typer.Option("--deferrable", metavar="", help="May wait for low-carbon power.")
    ] = False,
    max_runtime: Annotated[float | None, typer.Option(help="Seconds before it is stopped.")] = None,
    retries: Annotated[int, typer.Option(help="Retries after failure or loss.")] = 0,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=VALUE")] = None,
    secret: Annotated[
        list[str] | None, typer.Option(help="NAME=VALUE, or NAME to read it from your env.")
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Folder to snapshot and run in.")] = None,
    app: Annotated[
        str | None, typer.Option(help="Application name that --max-per-node counts under.")
    ] = None,
    max_per_node: Annotated[
        int | None, typer.Option(help="At most this many workers of the app on one node.")
    ] = None,
    node_selector: Annotated[
        list[str] | None,
        typer.Option(help="key=value label the node must carry (repeat: all must match)."),
    ] = None,
    preemptible: Annotated[
        bool,
        typer.Option(
            "--preemptible/--not-preemptible",
            metavar="",
            help="Whether it may be stopped for other work.",
        ),
    ] = True,
    json_: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the job as JSON, not its id.")
    ] = False,
    workdir_warn_mb: Annotated[
        float, typer.Option(help="Warn when --workdir holds more than this many MB.")
    ] = 100.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", metavar="", help="No progress bars.")
    ] = False,
) -> None:
    """Submit a job; prints its id. ``--workdir`` honours a ``.underlayignore`` file."""
    queue = project_of(project)
    env_vars = dict(_pairs(env or [], "--env"))
    secrets = dict(_pairs(secret or [], "--secret", from_env=True))
    with client() as c:
        digest = None
        if workdir is not None:
            digest = _upload_workdir(c, queue, workdir, workdir_warn_mb, quiet)
        job = c.submit_job(
            queue,
            command,
            name=name,
            cpus=cpus,
            memory_mib=memory,
            gpus=gpus,
            gpu_fraction=gpu_fraction,
            gpu_type=gpu_type,
            priority=priority,
            deferrable=deferrable,
            max_runtime_s=max_runtime,
            max_retries=retries,
            env=env_vars,
            secrets=secrets,
            workdir_digest=digest,
            app=app,
            max_per_node=max_per_node,
            node_selector=[f"{k}={v}" for k, v in _pairs(node_selector or [], "--node-selector")],
            preemptible=preemptible,
        )
    for warning in job.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if json_:
        show(job, [], as_json=True)
        return
    typer.echo(job.id)


def _pairs(items: list[str], option: str, *, from_env: bool = False) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if not from_env or key not in os.environ:
                raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
            value = os.environ[key]
        pairs.append((key, value))
    return pairs


JOB_COLUMNS = [
    Col("id", ident=True),
    Col("name", ident=True),
    Col("state"),
    Col("user", ident=True, optional=True),
    Col("node", fmt=lambda r: r["node"] or "-", ident=True, optional=True),
    Col("gpus", optional=True),
    Col("attempts", optional=True),
    Col("reason", optional=True),
]


@jobs.command("ls")
def jobs_ls(
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only these states: --state running,queued or repeated."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
) -> None:
    """Jobs, newest first, with why each pending job waits."""
    from underlay.compute.states import JobState

    states = choices(state, [s.value for s in JobState], "--state")
    with client() as c:
        rows = c.list_jobs(project_of(project), state=states, limit=limit)
    show(rows, JOB_COLUMNS, as_json=json_)


@jobs.command("show")
def jobs_show(job_id: int, project: JobProjectOpt = None, json_: JsonOpt = False) -> None:
    """One job in full."""
    with client() as c:
        job = _job(c, job_id, project)
    if json_:
        show(job, [], as_json=True)
        return
    for key, value in job.model_dump(mode="json").items():
        typer.echo(f"{key:>14}: {escape_control(str(value))}")


EXIT_NOT_SUCCEEDED = 1
EXIT_TIMED_OUT = 124  # as timeout(1)


def _job(c: Client, job_id: int, project: str | None) -> JobRead:
    """A job by its global id; a ``-p`` that names another project is refused."""
    from underlay.errors import InvalidInput

    job = c.read_job_by_id(job_id)
    if project is not None and project != job.project:
        raise InvalidInput(
            f"job {job_id} is in project {job.project!r}, not {project!r}: "
            "leave -p out (job ids are global) or give the job's project"
        )
    return job


def _echo_job(job: JobRead, as_json: bool, line: str) -> None:
    """A job command's result: ``line`` (escaped), or the job as JSON with ``--json``."""
    if as_json:
        show(job, [], as_json=True)
    else:
        typer.echo(escape_control(line))


def _print_transition(before: JobRead | None, now: JobRead) -> None:
    """One time-stamped line on stderr per state change: ``job 12: queued → running (node n1)``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    change = now.state if before is None else f"{before.state} → {now.state}"
    details = []
    if now.node and now.state not in ("queued", "admitted"):
        details.append(f"node {now.node}")
    if now.exit_code is not None:
        details.append(f"exit {now.exit_code}")
    detail = f" ({', '.join(details)})" if details else ""
    typer.echo(escape_control(f"{stamp} job {now.id}: {change}{detail}"), err=True)


def _state_line(job: JobRead) -> str:
    return escape_control(f"job {job.id}: {job.state} {job.reason}".rstrip())


@jobs.command("logs")
def jobs_logs(
    job_id: int,
    project: JobProjectOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", metavar="", help="Stream.")] = False,
) -> None:
    """A job's output; -f streams it until the job ends, then prints the final state on
    stderr and exits 0 if the job succeeded, 1 if it did not."""
    with client() as c:
        queue = _job(c, job_id, project).project
        for chunk in c.job_logs(queue, job_id, follow=follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        if not follow:
            return
        job = c.read_job(queue, job_id)
    typer.echo(_state_line(job), err=True)
    if job.state != "succeeded":
        raise typer.Exit(EXIT_NOT_SUCCEEDED)


@jobs.command("cancel")
def jobs_cancel(job_id: int, project: JobProjectOpt = None, json_: JsonOpt = False) -> None:
    """Cancel: at once if queued, else SIGTERM then SIGKILL after the grace period. A job
    that has ended already is left as it is (exit 0, as scancel does)."""
    from underlay.client.compute import TERMINAL
    from underlay.errors import Conflict

    with client() as c:
        queue = _job(c, job_id, project).project
        try:
            job = c.cancel_job(queue, job_id)
        except Conflict:
            job = c.read_job(queue, job_id)
            if job.state not in TERMINAL:
                raise
            _echo_job(job, json_, f"job {job.id} has ended already: {job.state}")
            return
    _echo_job(job, json_, _state_line(job))


@jobs.command("wait")
def jobs_wait(
    job_id: int,
    project: JobProjectOpt = None,
    timeout: Annotated[
        float | None, typer.Option(help="Give up after this many seconds (exit 124).")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the job as JSON at the end.")
    ] = False,
) -> None:
    """Wait for a job to end and print its final state.

    Exit status: 0 the job succeeded; 1 it ended without success (failed, cancelled, lost)
    or the wait itself failed (an error: line says why); 124 --timeout passed first (the
    job goes on; its state is printed)."""
    from underlay.errors import Unavailable

    with client() as c:
        queue = _job(c, job_id, project).project
        try:
            job = c.wait_job(queue, job_id, timeout_s=timeout, on_change=_print_transition)
        except Unavailable as exc:
            if not exc.extra.get("timed_out"):
                raise
            _echo_job(c.read_job(queue, job_id), json_, f"job {job_id}: {exc.extra['state']}")
            typer.echo(f"timed out: {exc}; the job goes on", err=True)
            raise typer.Exit(EXIT_TIMED_OUT) from None
    _echo_job(job, json_, _state_line(job))
    if job.state != "succeeded":
        raise typer.Exit(EXIT_NOT_SUCCEEDED)


@quotas.command("set")
def quotas_set(
    accelerator_type: str,
    guaranteed: int,
    project: ProjectOpt = None,
    borrow_limit: Annotated[int | None, typer.Option(help="Cap on borrowing.")] = None,
) -> None:
    """Guarantee a project GUARANTEED accelerators of a type."""
    project = project_of(project)
    with client() as c:
        q = c.set_quota(project, accelerator_type, guaranteed, borrow_limit)
    typer.echo(f"{project}: {q.guaranteed} x {q.accelerator_type} guaranteed")


@quotas.command("ls")
def quotas_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """A project's quotas."""
    with client() as c:
        show(
            c.list_quotas(project_of(project)),
            ["accelerator_type", "guaranteed", "borrow_limit"],
            as_json=json_,
        )


@budget.command("set")
def budget_set(
    project: ProjectOpt = None,
    gpu_hours: Annotated[float | None, typer.Option(help="GPU-hours a month.")] = None,
    money: Annotated[float | None, typer.Option(help="Money a month.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Set a monthly budget; submissions warn near it and are blocked past it."""
    with client() as c:
        status = c.set_budget(
            project_of(project), gpu_hours_per_month=gpu_hours, money_per_month=money
        )
    if json_:
        print_json(status)
        return
    typer.echo(status.get("message", "budget set"))


@budget.command("show")
def budget_show(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """How much of this month's budget is used."""
    with client() as c:
        status = c.budget(project_of(project))
    if json_:
        print_json(status)
        return
    typer.echo(status.get("message", ""))


def usage(
    project: Annotated[str | None, typer.Option("--project", "-p", help="One project.")] = None,
    user: Annotated[str | None, typer.Option(help="One user.")] = None,
    since: Annotated[dt.datetime | None, typer.Option(help="From (ISO time, UTC).")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Until (ISO time, UTC).")] = None,
    by: Annotated[str | None, typer.Option(help="Group by project, user or job.")] = None,
    json_: JsonOpt = False,
) -> None:
    """GPU-hours, energy, cost and carbon of your projects' jobs."""
    utc = [t.replace(tzinfo=dt.UTC) if t and t.tzinfo is None else t for t in (since, until)]
    with client() as c:
        rows = c.usage(project=project, user=user, since=utc[0], until=utc[1], group_by=by)
    cols = usage_columns()
    show(rows, cols, as_json=json_)


def usage_columns() -> list[Col]:
    """The ``usage`` table: human units; raw values stay in ``--json`` (docs/compute.md)."""
    from underlay.cli import units

    return [
        Col("key", "group", fmt=lambda r: r["key"] or "total", ident=True),
        Col("jobs"),
        Col("gpu_hours", "GPU time", fmt=lambda r: units.gpu_time(r["gpu_hours"])),
        Col("energy_kwh", "energy", fmt=_energy),
        Col("cost", fmt=lambda r: units.money(r["cost"], r["currency"])),
        Col("carbon_kg", "carbon", fmt=lambda r: units.carbon(r["carbon_kg"])),
        Col("attempts", optional=True),
        Col(
            "wall_hours",
            "wall",
            fmt=lambda r: units.duration(r["wall_hours"] * 3600),
            optional=True,
        ),
        Col(
            "cpu_hours",
            "CPU time",
            fmt=lambda r: f"{units.duration(r['cpu_hours'] * 3600)}",
            optional=True,
        ),
    ]


def _energy(row: dict[str, Any]) -> str:
    from underlay.cli import units

    return units.energy(row["energy_kwh"]) + (" (est.)" if row["energy_estimated"] else "")


def agent(
    server: Annotated[str, typer.Option(help="The server's URL.")],
    token: Annotated[
        str | None,
        typer.Option(help="The node's agent token ('underlay nodes token'; else UNDERLAY_TOKEN)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Node name (default: host name).")] = None,
) -> None:
    """Run a node agent: report this machine's accelerators and run the jobs placed on it."""
    import socket

    from underlay.agent import NodeAgent, node_executor
    from underlay.client import Client
    from underlay.config import Settings

    secret = token or os.environ.get("UNDERLAY_TOKEN")
    if not secret:
        raise typer.BadParameter("give --token or set UNDERLAY_TOKEN", param_hint="--token")
    settings = Settings()
    node = name or settings.compute.node_name or socket.gethostname()
    run_dir = settings.home / "agent" / node
    with Client(server, secret, retry_budget_s=0) as c:  # the agent's loop retries itself
        executor = node_executor(settings, run_dir, node)
        worker = NodeAgent(c, settings, executor, node, run_dir)
        typer.echo(f"agent for node {node} reporting to {server}", err=True)
        typer.echo(f"node {node}: {executor.isolation.describe()}", err=True)
        try:
            worker.run()
        finally:
            executor.close()

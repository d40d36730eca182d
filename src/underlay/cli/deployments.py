"""``underlay deploy``, ``underlay deployments`` and ``underlay predict``: model versions served
on replica processes, their canaries, and predictions through the JSON route."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

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

if TYPE_CHECKING:
    from underlay.serving.schemas import DeploymentRead

deployments = typer.Typer(
    help="Deployments: model versions served on replicas, canaries, rollbacks.",
    no_args_is_help=True,
)

ModelOpt = Annotated[
    str, typer.Option("--model", metavar="MODEL@ALIAS", help="The version to serve: NAME@ALIAS.")
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the events).")]


def _traffic(row: dict[str, Any]) -> str:
    return ", ".join(f"v{t['version']} {t['weight']:.0%}" for t in row.get("traffic") or [])


def _replicas(row: dict[str, Any]) -> str:
    return f"{row.get('ready_replicas', 0)}/{row.get('desired_replicas', 0)}"


def _canary(row: dict[str, Any]) -> str:
    canary = row.get("canary")
    return f"v{canary['version']} {canary['state']}" if canary else ""


def _done(found: DeploymentRead, as_json: bool, line: str) -> None:
    typer.echo(found.model_dump_json(indent=2) if as_json else line)


COLUMNS: list[str | Col] = [
    "name",
    "model",
    "version",
    "state",
    Col("replicas", fmt=_replicas),
    Col("traffic", fmt=_traffic),
    Col("canary", fmt=_canary),
]


def deploy(
    name: str,
    model: ModelOpt,
    project: ProjectOpt = None,
    replicas: Annotated[int, typer.Option(help="Replica processes.")] = 1,
    gpu_fraction: Annotated[
        float | None, typer.Option("--gpu-fraction", help="A share of one GPU per replica.")
    ] = None,
    cpus: Annotated[float, typer.Option(help="CPUs per replica.")] = 1.0,
    memory_mib: Annotated[int, typer.Option("--memory-mib", help="Memory per replica.")] = 1024,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Rows per batch at most.")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", help="How long a batch waits to fill.")
    ] = 5.0,
    reason: ReasonOpt = "",
    json_: JsonOpt = False,
) -> None:
    """Deploy a registered, signed model version on replica processes placed by the
    scheduler; prints the endpoint URL (POST it {"records": [...]})."""
    with client() as c:
        created = c.deploy(
            project_of(project),
            name,
            model,
            replicas=replicas,
            gpu_fraction=gpu_fraction,
            cpus=cpus,
            memory_mib=memory_mib,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            reason=reason,
        )
        base = str(c._http.base_url).rstrip("/").removesuffix("/api/v1")
    if json_:
        typer.echo(created.model_dump_json(indent=2))
        return
    typer.echo(base + created.endpoint)


@deployments.command("ls")
def deployments_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List the project's deployments with their version, ready replicas and traffic split."""
    with client() as c:
        rows = c.list_deployments(project_of(project))
    show(rows, COLUMNS, as_json=json_)


@deployments.command("show")
def deployments_show(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Show a deployment: its replicas with their state, the traffic split, the canary."""
    with client() as c:
        found = c.read_deployment(project_of(project), name)
    if json_:
        typer.echo(found.model_dump_json(indent=2))
        return
    show(found, [*COLUMNS, "endpoint", "max_batch", "max_wait_ms"], as_json=False)
    show(
        found.replicas,
        ["id", "slot", "arm", "version", "state", "job_id", "restarts", "reason"],
        as_json=False,
    )


@deployments.command("scale")
def deployments_scale(
    name: str,
    replicas: Annotated[int, typer.Argument(help="How many replicas to run.")],
    project: ProjectOpt = None,
    reason: ReasonOpt = "",
    json_: JsonOpt = False,
) -> None:
    """Run REPLICAS replicas (new ones start, extra ones drain and stop)."""
    with client() as c:
        found = c.update_deployment(project_of(project), name, replicas=replicas, reason=reason)
    _done(found, json_, f"deployment {name}: {replicas} replicas")


@deployments.command("update")
def deployments_update(
    name: str,
    model: ModelOpt,
    project: ProjectOpt = None,
    reason: ReasonOpt = "",
    json_: JsonOpt = False,
) -> None:
    """Roll the deployment to another version: new replicas start, traffic switches once they
    are ready, the old ones drain; no request is dropped."""
    with client() as c:
        found = c.update_deployment(project_of(project), name, model=model, reason=reason)
    _done(found, json_, f"deployment {name}: rolling to version {found.target_version}")


@deployments.command("canary")
def deployments_canary(
    name: str,
    model: ModelOpt,
    project: ProjectOpt = None,
    weight: Annotated[float, typer.Option(help="Share of traffic, 0 to 1.")] = 0.1,
    window_s: Annotated[float, typer.Option("--window-s", help="How long it is watched.")] = 60.0,
    min_requests: Annotated[int, typer.Option("--min-requests")] = 20,
    max_error_rate: Annotated[float, typer.Option("--max-error-rate")] = 0.05,
    max_p99_ms: Annotated[float, typer.Option("--max-p99-ms")] = 500.0,
    reason: ReasonOpt = "",
    json_: JsonOpt = False,
) -> None:
    """Send WEIGHT of the traffic to another version; it rolls back by itself when its error
    rate or p99 latency breaches the limits within its window."""
    with client() as c:
        found = c.start_canary(
            project_of(project),
            name,
            model,
            weight=weight,
            window_s=window_s,
            min_requests=min_requests,
            max_error_rate=max_error_rate,
            max_p99_ms=max_p99_ms,
            reason=reason,
        )
    version = found.canary.version if found.canary else "?"
    _done(found, json_, f"deployment {name}: canary of version {version}")


@deployments.command("promote")
def deployments_promote(
    name: str, project: ProjectOpt = None, reason: ReasonOpt = "", json_: JsonOpt = False
) -> None:
    """Make the canary the stable version."""
    with client() as c:
        found = c.promote_canary(project_of(project), name, reason)
    _done(found, json_, f"deployment {name}: promoting version {found.target_version}")


@deployments.command("rollback")
def deployments_rollback(
    name: str, project: ProjectOpt = None, reason: ReasonOpt = "", json_: JsonOpt = False
) -> None:
    """Send all traffic back to the stable version and stop the canary."""
    with client() as c:
        found = c.rollback_canary(project_of(project), name, reason)
    _done(found, json_, f"deployment {name}: rolled back to version {found.version}")


@deployments.command("events")
def deployments_events(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Every change of a deployment: what, who, when, why."""
    with client() as c:
        rows = c.deployment_events(project_of(project), name)
    show(rows, [when("at"), "kind", "actor", "reason"], as_json=json_)


@deployments.command("rm")
def deployments_rm(name: str, project: ProjectOpt = None, yes: YesOpt = False) -> None:
    """Remove a deployment: its replicas drain and stop."""
    project_name = delete_in_project("deployment", name, project, yes, "its replicas")
    with client() as c:
        c.delete_deployment(project_name, name)
    typer.echo(f"deleted deployment {name}")


def predict(
    name: str,
    body: Annotated[
        str, typer.Option("--json", metavar="BODY", help='The request: {"records": [...]}.')
    ],
    project: ProjectOpt = None,
) -> None:
    """Predict with a deployment through its JSON route; prints the JSON answer."""
    from underlay.errors import InvalidInput

    try:
        request = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"--json is not JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("records"), list):
        raise InvalidInput('--json must be {"records": [...]}')
    with client() as c:
        answer = c.predict(project_of(project), name, request["records"])
    print_json(answer)


@deployments.command("feedback")
def feedback(
    name: str,
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            metavar="JSON",
            help='The labels: [{"request_id": "...", "label": 1}, ...] ("row" for one row of '
            "a request of several).",
        ),
    ],
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send ground-truth labels by request id (stored in the deployment's feedback table)."""
    from underlay.errors import InvalidInput

    try:
        items = json.loads(labels)
    except ValueError as exc:
        raise InvalidInput(f"--labels is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise InvalidInput('--labels must be a list: [{"request_id": "...", "label": ...}]')
    with client() as c:
        result = c.send_feedback(project_of(project), name, items)
    if as_json:
        print_json(result.model_dump())
        return
    unlogged = f" ({result.unlogged} for requests not in the log)" if result.unlogged else ""
    typer.echo(f"{result.accepted} labels stored in {result.table}@{result.version}{unlogged}")

"""The ``underlay`` command: one Typer app; errors print one line and exit non-zero."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from underlay.cli import (
    admin,
    alerts,
    compute,
    configure,
    data,
    demo,
    deployments,
    keys,
    models,
    monitor,
    pipelines,
    resources,
    runs,
    server,
    tables,
)
from underlay.cli.simulate import simulate
from underlay.cli.status import status

app = typer.Typer(
    name="underlay",
    help="underlay: self-hosted AI infrastructure. Start with 'underlay demo' or 'underlay up'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"underlay {version('underlay')}")
        raise typer.Exit()


@app.callback()
def options(
    profile: Annotated[
        str | None,
        typer.Option(help="Use this saved profile (else UNDERLAY_PROFILE, else the current)."),
    ] = None,
    url: Annotated[str | None, typer.Option(help="Server URL (over UNDERLAY_URL).")] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar="", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """underlay: self-hosted AI infrastructure. Start with 'underlay demo' or 'underlay up'."""
    from underlay.cli.common import OPTIONS

    OPTIONS.profile, OPTIONS.url = profile, url


app.command()(server.up)
app.command()(server.login)
app.command()(server.logout)
app.add_typer(configure.settings, name="config")
app.command()(demo.demo)
app.add_typer(resources.projects, name="projects")
app.add_typer(resources.users, name="users")
app.add_typer(resources.tokens, name="tokens")
app.add_typer(resources.blobs, name="blobs")
app.add_typer(data.datasets, name="datasets")
app.add_typer(tables.tables, name="tables")
app.add_typer(pipelines.pipelines, name="pipelines")
app.add_typer(runs.experiments, name="experiments")
app.add_typer(runs.runs, name="runs")
app.add_typer(models.models, name="models")
app.command("deploy")(deployments.deploy)
app.add_typer(deployments.deployments, name="deployments")
app.command("predict")(deployments.predict)
app.command("sql")(tables.sql)
app.add_typer(resources.audit, name="audit")
app.add_typer(keys.keys, name="keys")
app.add_typer(admin.admin, name="admin")
app.add_typer(resources.lineage, name="lineage")
app.add_typer(compute.nodes, name="nodes")
app.add_typer(compute.jobs, name="jobs")
app.add_typer(compute.quotas, name="quotas")
app.add_typer(compute.budget, name="budget")
app.add_typer(alerts.alerts, name="alerts")
app.add_typer(monitor.monitor, name="monitor")
app.command("usage")(compute.usage)
app.command("agent")(compute.agent)
app.command("simulate")(simulate)
app.command("status")(status)


def command() -> Any:
    """The Click command behind ``app``, with ``--help`` and Typer's completion flags shown
    as the plain flags they are (Typer would print a ``<bool>`` type beside them)."""
    import typer.main

    root = typer.main.get_command(app)

    def plain_help(cmd: Any) -> None:
        option = cmd.get_help_option(cmd.context_class(cmd, info_name=cmd.name))
        if option is not None:
            option.metavar = ""  # the option object is cached on the command
        for param in cmd.params:  # Typer's own flags (--install-completion...) alike
            if param.param_type_name == "option" and getattr(param, "is_bool_flag", False):
                param.metavar = param.metavar or ""
        for sub in getattr(cmd, "commands", {}).values():
            plain_help(sub)

    plain_help(root)
    return root


def main() -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit, never a traceback."""
    from underlay.config import unknown_env_warnings
    from underlay.errors import UnderlayError

    for warning in unknown_env_warnings(os.environ):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        code = command().main(prog_name="underlay", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: one line, with what to do
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help(), file=sys.stderr)  # a bare group: show its help
        else:
            print(f"error: {exc.format_message()} (see --help)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except UnderlayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last line of defence: one line, never a traceback
        if os.environ.get("UNDERLAY_DEBUG"):
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (UNDERLAY_DEBUG=1 shows more)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

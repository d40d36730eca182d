"""``underlay config``: which server, token, project and profile commands use, and why."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from underlay.cli.common import JsonOpt, cell, config

settings = typer.Typer(
    help="Client configuration: flags > environment > profile > defaults.", no_args_is_help=True
)


@settings.command("show")
def show(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="As a command given -p would see it.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Each resolved value and where it came from; the token only as its prefix."""
    shown = config(project=project).shown()
    if json_:
        typer.echo(json.dumps(shown, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("setting", "value", "from"):
        table.add_column(col, overflow="fold")
    for key, item in shown.items():
        value = "-" if item["value"] is None else item["value"]
        table.add_row(key, cell(value), cell(item["source"]))
    Console().print(table)


@settings.command("use")
def use(name: str) -> None:
    """Make saved profile NAME the current one."""
    from underlay.client.profiles import use_profile

    path = use_profile(name)
    typer.echo(f"profile {name!r} is now current ({path})")

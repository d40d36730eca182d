"""``underlay monitor``: drift, performance and the retraining loop of deployments."""

from __future__ import annotations

import typer

monitor = typer.Typer(
    help="Monitoring of deployments: drift, performance, the retraining loop.",
    no_args_is_help=True,
)

from underlay.cli import monitor_loop  # noqa: E402  - registers its commands on the group

monitor_loop.register(monitor)

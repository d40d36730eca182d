"""The node agent: a face of its own, like the CLI, that talks to the server only over the REST
API with an ``agent`` token bound to its node (see :mod:`underlay.agent.node`)."""

from __future__ import annotations

from pathlib import Path

from underlay.agent.node import NodeAgent
from underlay.compute.executors import isolation
from underlay.compute.executors.local import LocalExecutor
from underlay.config import Settings

__all__ = ["NodeAgent", "local_executor"]


def local_executor(settings: Settings, run_dir: Path) -> LocalExecutor:
    """This machine's executor, isolating jobs as well as the machine allows (see
    :mod:`underlay.compute.executors.isolation`)."""
    chosen = isolation.from_settings(settings.compute, settings.home, run_dir)
    return LocalExecutor(
        run_dir / "status", grace_s=settings.compute.grace_s, isolation=chosen, work_dir=run_dir
    )

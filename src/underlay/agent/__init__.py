"""The node agent: a face of its own, like the CLI, that talks to the server only over the REST
API with an ``agent`` token bound to its node (see :mod:`underlay.agent.node`)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from underlay.agent.node import NodeAgent
from underlay.compute.executors import isolation
from underlay.compute.executors.local import LocalExecutor
from underlay.config import Settings
from underlay.errors import Unavailable

if TYPE_CHECKING:
    from underlay.compute.executors.base import Executor
    from underlay.compute.executors.ray_executor import RayExecutor

__all__ = ["NodeAgent", "local_executor", "node_executor", "ray_executor"]


def local_executor(settings: Settings, run_dir: Path) -> LocalExecutor:
    """This machine's executor, isolating jobs as well as the machine allows (see
    :mod:`underlay.compute.executors.isolation`)."""
    chosen = isolation.from_settings(settings.compute, settings.home, run_dir)
    return LocalExecutor(
        run_dir / "status", grace_s=settings.compute.grace_s, isolation=chosen, work_dir=run_dir
    )


def node_executor(settings: Settings, run_dir: Path, node: str) -> Executor:
    """The executor ``settings.compute.executor`` names, for the agent of ``node``."""
    if settings.compute.executor == "ray":
        return ray_executor(settings, run_dir, node)
    return local_executor(settings, run_dir)


def ray_executor(settings: Settings, run_dir: Path, node: str) -> RayExecutor:
    """The Ray executor, on ``compute.ray_address`` or, without one, on a one-node cluster it
    starts bound to 127.0.0.1 when it first needs it (stopped by its ``close``). The isolation
    it reports is what this machine's Ray workers choose (each node chooses its own)."""
    from underlay.compute.executors.ray_cluster import LocalRayCluster
    from underlay.compute.executors.ray_executor import RayExecutor

    if importlib.util.find_spec("ray") is None:
        raise Unavailable("compute.executor = 'ray' needs Ray here: pip install 'underlay[ray]'")
    compute = settings.compute
    worker_dir = compute.ray_worker_dir or run_dir / "ray-workers"
    cluster = None
    address, node_ip = compute.ray_address or "", compute.ray_node_ip
    if not address:  # the executor starts it when it first needs it, in the agent's thread
        temp = compute.ray_temp_dir or Path(tempfile.gettempdir()) / f"underlay-ray-{os.getuid()}"
        # Ray's sessions and token: never visible to a job
        compute = compute.model_copy(update={"sandbox_hide": [*compute.sandbox_hide, temp]})
        cluster = LocalRayCluster(temp)
    chosen = isolation.from_settings(compute, settings.home, worker_dir)
    executor = RayExecutor(
        run_dir / "ray",
        node=node,
        address=address,
        compute=compute,
        home=settings.home,
        worker_dir=worker_dir,
        node_ip=node_ip,
        isolation=chosen,
        auth_token_path=cluster.token_path if cluster is not None else None,
    )
    executor.cluster = cluster
    return executor

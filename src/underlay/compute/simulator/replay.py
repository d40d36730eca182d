"""One call from names to a report: load the trace, build the cluster, replay, measure.

``simulate("philly", None, "default")`` is what ``underlay simulate`` runs. A trace is a
built-in name (``philly``, ``openb``) or a path to a CSV in our format; a cluster is a compact
spec (``32x8xA100``), ``openb`` / ``openb-gpu`` (the Alibaba node lists) or a node CSV; with
no cluster the trace's own default is used. Quotas come from the trace's weights (Philly: VC
sizes) or, when it has none, split each accelerator type evenly between its projects.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from underlay.compute.scheduler import Node, Quota, Window, policy_config
from underlay.compute.simulator.autoscaling import AutoscaleSpec, slot_nodes
from underlay.compute.simulator.builtin import (
    BUILTIN,
    load_builtin,
    openb_nodes_path,
    traces_dir,
)
from underlay.compute.simulator.cluster import load_node_csv, parse_spec, quotas_from_weights
from underlay.compute.simulator.engine import Simulation
from underlay.compute.simulator.metrics import Report
from underlay.compute.simulator.trace import Trace, load_csv
from underlay.errors import InvalidInput


def load_trace(name: str, folder: Path | None = None, seed: int = 0) -> Trace:
    """A built-in trace by name, or our CSV format from a path."""
    if name in BUILTIN:
        return load_builtin(name, folder, seed)
    path = Path(name)
    if not path.is_file():
        raise InvalidInput(
            f"trace {name!r} is neither a built-in trace ({', '.join(BUILTIN)}) nor a file"
        )
    return load_csv(path)


def build_cluster(spec: str, folder: Path | None = None) -> tuple[Node, ...]:
    """Nodes for a cluster spec, ``openb``/``openb-gpu``, or a node CSV path."""
    if spec in ("openb", "openb-gpu"):
        return load_node_csv(openb_nodes_path(traces_dir(folder), gpu_only=spec == "openb-gpu"))
    if "x" not in spec and Path(spec).is_file():
        return load_node_csv(Path(spec))
    return parse_spec(spec)


def quotas_for(trace: Trace, nodes: tuple[Node, ...]) -> tuple[Quota, ...]:
    weights = trace.quota_weights
    if not weights:
        projects = sorted({j.workload.project for j in trace.jobs})
        if len(projects) < 2:
            return ()  # one project: a quota of the whole cluster constrains nothing
        weights = tuple((p, 1.0) for p in projects)
    return quotas_from_weights(nodes, weights)


def parse_window(text: str) -> Window:
    """A daily window from ``HH:MM-HH:MM`` (it may wrap past midnight)."""
    match = re.fullmatch(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})", text.strip())
    if match is None:
        raise InvalidInput(f"window {text!r} is not HH:MM-HH:MM (example: 01:00-05:30)")
    h1, m1, h2, m2 = (int(x) for x in match.groups())
    if max(h1, h2) > 24 or max(m1, m2) > 59:
        raise InvalidInput(f"window {text!r} has an hour above 24 or a minute above 59")
    return Window(h1 * 3600.0 + m1 * 60.0, h2 * 3600.0 + m2 * 60.0)


def simulate(
    trace: str,
    cluster: str | None = None,
    policy: str = "default",
    *,
    seed: int = 0,
    folder: Path | None = None,
    restart_overhead_s: float = 60.0,
    interval_s: float = 60.0,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    autoscale: AutoscaleSpec | None = None,
) -> Report:
    """Replay ``trace`` on ``cluster`` under ``policy`` (with fields of the policy replaced by
    ``overrides``) and report the measures; ``progress(ended, total)`` follows the jobs that
    have ended (finished or rejected) out of the trace's. With ``autoscale`` its node groups
    join the cluster (``cluster`` ``none``: they are all of it)."""
    config = policy_config(policy, **(overrides or {}))
    loaded = load_trace(trace, folder, seed)
    spec = cluster or loaded.default_cluster
    if spec is None:
        raise InvalidInput(f"trace {trace!r} has no default cluster; pass one, e.g. 16x8xA100")
    if spec == "none" and autoscale is None:
        raise InvalidInput("cluster 'none' needs node groups to scale (--autoscale)")
    nodes = () if spec == "none" else build_cluster(spec, folder)
    every = nodes + (slot_nodes(autoscale) if autoscale is not None else ())
    return Simulation(
        loaded,
        nodes,
        quotas_for(loaded, every),
        config,
        cluster_name=spec,
        seed=seed,
        restart_overhead_s=restart_overhead_s,
        interval_s=interval_s,
        progress=progress,
        autoscale=autoscale,
    ).run()

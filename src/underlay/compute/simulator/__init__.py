"""The trace simulator: replays job traces through the same ``decide`` the live loop runs.

:func:`simulate` goes from names to a :class:`Report`; :class:`Simulation` is the engine;
:mod:`.trace` holds our CSV format, :mod:`.builtin` the Philly and Alibaba openb loaders,
:mod:`.cluster` the cluster specs and :mod:`.metrics` the definitions of every measure.
"""

from __future__ import annotations

from underlay.compute.simulator.engine import Simulation
from underlay.compute.simulator.metrics import Report
from underlay.compute.simulator.replay import build_cluster, load_trace, quotas_for, simulate
from underlay.compute.simulator.trace import Trace, TraceJob

__all__ = [
    "Report",
    "Simulation",
    "Trace",
    "TraceJob",
    "build_cluster",
    "load_trace",
    "quotas_for",
    "simulate",
]

"""The named policies: ``default`` (ours) and the baselines it is measured against.

=================  =========  ========  ==============  =======================================
name               order      head      packing         also
=================  =========  ========  ==============  =======================================
``fifo``           fifo       strict    first-fit       nothing passes a blocked head (YARN-CS)
``fifo-backfill``  fifo       backfill  first-fit       head gets a node reservation
``first-fit``      fifo       skip      first-fit       any later work that fits starts
``las``            las        skip      first-fit       Tiresias-like discretised LAS, preempts
``default``        fair       skip      fragmentation   quotas (work starts on what is left
                                                        of a guarantee), borrowing and
                                                        reclaim, DRF, priority classes, LAS
                                                        levels inside a project and over
                                                        what other projects borrow
=================  =========  ========  ==============  =======================================

Energy-aware placement and low-carbon windows are options on any of them
(``PolicyConfig.energy_aware``, ``low_carbon_windows``), off by default: preferring the most
efficient accelerator type concentrates work on it and costs packing quality.

The service-level thresholds (1 and 10 accelerator-hours) follow Tiresias' two-threshold
discretisation; they need no knowledge of job durations.

``default`` lets later work pass a blocked head instead of holding room for it: without
duration estimates a hold is re-taken every round and idles what it holds (on the wide-gang
scenario of ``benchmarks/scenarios.py`` a held ``default`` was 1.49x ``las``'s average JCT);
a blocked workload at a low service level gets its room by preemption instead.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from underlay.compute.scheduler.snapshot import PolicyConfig
from underlay.errors import InvalidInput

LEVELS = (3600.0, 36000.0)

POLICIES: dict[str, PolicyConfig] = {
    "default": PolicyConfig(
        name="default",
        order="fair",
        head="skip",
        packing="fragmentation",
        quotas=True,
        reclaim=True,
        priority_preemption=True,
        service_levels=LEVELS,
        las_preemption=True,
        las_scope="project",
        las_borrowed=True,
        guarantee_start=True,
        min_runtime_s=60.0,
    ),
    "fifo": PolicyConfig(
        name="fifo",
        order="fifo",
        head="strict",
        packing="first-fit",
        quotas=False,
        reclaim=False,
        priority_preemption=False,
    ),
    "fifo-backfill": PolicyConfig(
        name="fifo-backfill",
        order="fifo",
        head="backfill",
        packing="first-fit",
        quotas=False,
        reclaim=False,
        priority_preemption=False,
    ),
    "first-fit": PolicyConfig(
        name="first-fit",
        order="fifo",
        head="skip",
        packing="first-fit",
        quotas=False,
        reclaim=False,
        priority_preemption=False,
    ),
    "las": PolicyConfig(
        name="las",
        order="las",
        head="skip",
        packing="first-fit",
        quotas=False,
        reclaim=False,
        priority_preemption=False,
        service_levels=LEVELS,
        las_preemption=True,
        las_scope="cluster",
        min_runtime_s=60.0,
    ),
}


def policy_config(name: str, **overrides: Any) -> PolicyConfig:
    """The named policy, with fields replaced by ``overrides``."""
    base = POLICIES.get(name)
    if base is None:
        raise InvalidInput(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(PolicyConfig)})
    if unknown:
        raise InvalidInput(f"unknown policy setting(s) {', '.join(unknown)}")
    return replace(base, **overrides) if overrides else base

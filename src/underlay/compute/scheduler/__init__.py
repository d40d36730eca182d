"""The scheduling policy: a pure function from a cluster snapshot to decisions.

>>> from underlay.compute.scheduler import decide, Snapshot
>>> decisions = decide(snapshot)  # Place / Preempt / Wait (with a reason) / Reject

:mod:`.snapshot` holds the input types, :mod:`.decisions` the output types, :mod:`.policies`
the named configurations, :mod:`.codec` their JSON form, and one module per rule.
"""

from __future__ import annotations

from underlay.compute.scheduler.decisions import (
    Abandon,
    Decisions,
    Place,
    Preempt,
    Reject,
    Wait,
)
from underlay.compute.scheduler.policies import POLICIES, policy_config
from underlay.compute.scheduler.policy import decide
from underlay.compute.scheduler.snapshot import (
    WHOLE,
    Accelerator,
    Claim,
    Demand,
    Node,
    PolicyConfig,
    PowerModel,
    Quota,
    Request,
    Running,
    Snapshot,
    Window,
    WorkerPlacement,
    Workload,
)

__all__ = [
    "POLICIES",
    "WHOLE",
    "Abandon",
    "Accelerator",
    "Claim",
    "Decisions",
    "Demand",
    "Node",
    "Place",
    "PolicyConfig",
    "PowerModel",
    "Preempt",
    "Quota",
    "Reject",
    "Request",
    "Running",
    "Snapshot",
    "Wait",
    "Window",
    "WorkerPlacement",
    "Workload",
    "decide",
    "policy_config",
]

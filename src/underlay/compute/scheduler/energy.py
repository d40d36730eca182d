"""Energy rules: prefer efficient accelerators, and hold deferrable work for low-carbon hours.

- :func:`type_order` lists the accelerator types a request may use; with ``energy_aware``
  the one with the lowest busy power draw comes first (the power model of the accelerators
  in the snapshot), so work that accepts any type lands on the most efficient free one.
- :func:`hold_reason` keeps a *deferrable* workload pending while no configured low-carbon
  window is open, but never longer than ``max_defer_s`` after it was submitted, so deferral
  can delay work and never starve it.
"""

from __future__ import annotations

import math

from underlay.compute.scheduler.snapshot import PolicyConfig, Request, Workload


def type_order(
    request: Request, types: list[str], power: dict[str, float], energy_aware: bool
) -> list[str]:
    """The accelerator types ``request`` may use, in the order to try them."""
    if request.gpu_type is not None:
        return [request.gpu_type] if request.gpu_type in types else []
    if not energy_aware:
        return types
    return sorted(types, key=lambda t: (power.get(t, math.inf), t))


def hold_reason(workload: Workload, config: PolicyConfig, clock: float) -> tuple[str, float] | None:
    """Why a deferrable workload is held now and the clock at which to look again, or None."""
    windows = config.low_carbon_windows
    if not workload.deferrable or not windows:
        return None
    if any(w.contains(clock) for w in windows):
        return None
    deadline = workload.submit_time + config.max_defer_s
    if clock >= deadline:
        return None
    wait = min(w.opens_in(clock) for w in windows)
    opens = clock + wait
    nxt = min(opens, deadline)
    start = min(windows, key=lambda w: w.opens_in(clock)).start_s
    hh, mm = int(start // 3600) % 24, int(start % 3600 // 60)
    return (
        f"deferrable: held for the low-carbon window at {hh:02d}:{mm:02d} "
        f"(opens in {_duration(wait)}; runs anyway {_duration(deadline - clock)} from now)",
        nxt,
    )


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"

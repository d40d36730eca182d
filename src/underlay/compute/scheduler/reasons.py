"""Why a workload waits, in words a person can act on: the capacity it could not find.

Reasons are written once per worker shape and accelerator types in a round (the policy
memoises them) and quote the cluster as it is then: the most free GPUs of a type on one node,
the largest free share of one GPU, and the host resources asked for with them.
"""

from __future__ import annotations

from collections.abc import Sequence

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.quota import gpus_text
from underlay.compute.scheduler.snapshot import Workload


def no_fit_reason(state: ClusterState, w: Workload, types: Sequence[str | None]) -> str:
    """Why no healthy node can take ``w`` on any of ``types`` now."""
    req = w.request
    s = state
    host = host_text(req.cpu_milli, req.memory_mib)
    named = [t for t in types if t is not None]
    which = named[0] if len(named) == 1 else "GPUs of one type"
    if not named:
        text = f"no healthy node has {host or 'room'} free"
    elif req.gpus:
        if len(named) == 1:
            unit, most = f"{which} GPUs", f"most free {which} on one node: {s.most_free(which)}"
        else:
            unit = which
            most = "most free on one node: " + ", ".join(f"{t} {s.most_free(t)}" for t in named)
        text = f"no healthy node has {req.gpus} free {unit}"
        text += f" with {host}" if host else ""
        text += f" ({most})"
    else:
        largest = ", ".join(f"{t} {gpus_text(s.largest_share(t))}" for t in named)
        unit = f"{named[0]} GPU" if len(named) == 1 else "GPU"
        text = f"no healthy {unit} has {gpus_text(req.gpu_milli)} of a GPU free"
        text += f" with {host} on its node" if host else ""
        text += f" (largest free share: {largest})"
    if w.gang > 1:
        fit = workers_that_fit(s, w, named or [None], w.gang)
        if fit:  # one worker fits somewhere: the gang as a whole is what does not
            text = f"the free room holds only {fit} of its workers now"
        text = f"gang of {w.gang} workers cannot be placed at once: " + text
    return text


def workers_that_fit(
    state: ClusterState, w: Workload, types: Sequence[str | None], most: int
) -> int:
    """How many of ``w``'s workers the free room could take now, on one type (the best),
    counting at most ``most``; the state is left as it was."""
    best = 0
    for t in types:
        allocs: list[Alloc] = []
        for n in range(len(state.names)):
            while len(allocs) < most and (a := state.alloc_on(n, w.request, t)) is not None:
                state.allocate(a)
                allocs.append(a)
        for a in reversed(allocs):
            state.release(a)
        best = max(best, len(allocs))
    return best


def host_text(cpu_milli: int, memory_mib: int) -> str:
    parts = []
    if cpu_milli:
        parts.append(f"{cpu_milli / 1000:g} CPUs")
    if memory_mib:
        parts.append(f"{memory_mib} MiB memory")
    return " and ".join(parts)


def names_text(names: list[str]) -> str:
    if len(names) <= 3:
        return "node " + ", ".join(names) if len(names) == 1 else "nodes " + ", ".join(names)
    return f"{len(names)} nodes ({', '.join(names[:3])}, ...)"

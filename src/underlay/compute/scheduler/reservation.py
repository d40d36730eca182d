"""Backfill reservations: what a blocked head of the queue holds so later work cannot delay it.

When the first workload in line does not fit, the policy picks the nodes it will start on
(the ones of an accepted accelerator type with the most free capacity now, enough of them to
host every worker once their current work ends) and *holds* on them the free resources the
head will need: its whole GPUs, CPUs and memory, up to what each node has free now. Later
work may use whatever is left on those nodes, and anything elsewhere, which is why backfill
never delays the head: nothing it will need is given away. Holding resources instead of
whole nodes keeps a one-GPU head from idling an eight-GPU node.

Without duration estimates the hold cannot know *when* the head will start, so it is taken
again on every round for as long as the head waits; the live loop and the simulator both
re-run the policy as work finishes.
"""

from __future__ import annotations

from collections.abc import Sequence

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.snapshot import WHOLE, Workload


def hold_for(state: ClusterState, w: Workload, types: Sequence[str | None]) -> list[str]:
    """Hold resources for ``w`` and return the names of the nodes involved ([] if none can
    ever host it together)."""
    best: tuple[int, list[tuple[int, int]], str | None] | None = None
    for t in types:
        picked = _pick(state, w, t)
        if picked is not None and (best is None or picked[0] > best[0]):
            best = (picked[0], picked[1], t)
    if best is None:
        return []
    _, nodes, t = best
    for node, workers in nodes:
        alloc = _free_part(state, node, w, t, workers)
        if alloc is not None:
            state.allocate(alloc)
    return [state.names[n] for n, _ in nodes]


def _pick(
    state: ClusterState, w: Workload, t: str | None
) -> tuple[int, list[tuple[int, int]]] | None:
    """Nodes (with workers each) with the most free ``t`` capacity that can host the gang.

    Nodes with some free ``t`` capacity (found through the index) are ranked first; the
    whole pool is ranked only if they cannot host the gang.
    """
    if t is not None:
        seen: dict[int, None] = {}
        for bucket in reversed(state.full.get(t, [])):
            seen.update(bucket)
        for members in state.partial.get(t, {}).values():
            seen.update((n, None) for n, _ in members)
        picked = _rank(state, w, t, list(seen))
        if picked is not None:
            return picked
    pool = state.nodes_of_type.get(t, []) if t is not None else range(len(state.names))
    return _rank(state, w, t, pool)


def _rank(
    state: ClusterState, w: Workload, t: str | None, pool: Sequence[int]
) -> tuple[int, list[tuple[int, int]]] | None:
    ranked: list[tuple[int, int, int, int]] = []
    for n in pool:
        room = room_on(state, n, w, t)
        if room <= 0 or not state.available(n):
            continue
        free = 0
        if t is not None:
            types = state.gpu_type[n]
            free = sum(f for g, f in enumerate(state.gpu_free[n]) if f > 0 and types[g] == t)
        ranked.append((-free, -state.free_cpu[n], n, room))
    ranked.sort()
    picked: list[tuple[int, int]] = []
    hosted = 0
    free_held = 0
    for free, _, n, room in ranked:
        if hosted >= w.gang:
            break
        take = min(room, w.gang - hosted)
        hosted += take
        free_held -= free
        picked.append((n, take))
    return (free_held, picked) if hosted >= w.gang else None


def room_on(state: ClusterState, node: int, w: Workload, t: str | None) -> int:
    """Workers of ``w`` that ``node`` could host when empty."""
    req = w.request
    room = w.gang
    if t is not None:
        count = state.type_count(node, t)
        room = count // req.gpus if req.gpus else count
    if req.cpu_milli:
        room = min(room, state.cap_cpu[node] // req.cpu_milli)
    if req.memory_mib:
        room = min(room, state.cap_mem[node] // req.memory_mib)
    return room


def _free_part(
    state: ClusterState, node: int, w: Workload, t: str | None, workers: int
) -> Alloc | None:
    """What is free now on ``node`` of what ``workers`` workers of ``w`` will need there."""
    req = w.request
    gpus: tuple[int, ...] = ()
    milli = WHOLE
    if t is not None and req.gpus:
        idle = [
            g
            for g, f in enumerate(state.gpu_free[node])
            if f == WHOLE and state.gpu_type[node][g] == t
        ]
        gpus = tuple(idle[: req.gpus * workers])
    elif t is not None and req.gpu_milli:
        shares = [
            (f, g)
            for g, f in enumerate(state.gpu_free[node])
            if f > 0 and state.gpu_type[node][g] == t
        ]
        if shares:
            free, g = max(shares)
            gpus, milli = (g,), min(free, req.gpu_milli)
    cpu = min(max(0, state.free_cpu[node]), req.cpu_milli * workers)
    mem = min(max(0, state.free_mem[node]), req.memory_mib * workers)
    if not gpus and not cpu and not mem:
        return None
    return Alloc(node, gpus, milli, cpu, mem)

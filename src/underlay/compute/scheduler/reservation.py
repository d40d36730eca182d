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


def hold_for(
    state: ClusterState,
    w: Workload,
    types: Sequence[str | None],
    rooms: dict[int, int] | None = None,
) -> list[str]:
    """Hold resources for ``w`` and return the names of the nodes involved ([] if none can
    ever host it together). ``rooms`` (for constrained work) maps the nodes ``w`` may run on
    to how many of its workers each may take: nothing is held anywhere else."""
    best: tuple[int, list[tuple[int, int]], str | None] | None = None
    for t in types:
        picked = _pick(state, w, t) if rooms is None else _pick_within(state, w, t, rooms)
        if picked is not None and (best is None or picked[0] > best[0]):
            best = (picked[0], picked[1], t)
    if best is None:
        return []
    _, nodes, t = best
    for node, workers in nodes:
        for alloc in _free_part(state, node, w, t, workers):
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


def _pick_within(
    state: ClusterState, w: Workload, t: str | None, rooms: dict[int, int]
) -> tuple[int, list[tuple[int, int]]] | None:
    """As :func:`_pick`, over the allowed nodes only, each hosting at most its room."""
    pool = [n for n in sorted(rooms) if rooms[n] > 0]
    if t is not None:
        pool = [n for n in pool if state.type_count(n, t)]
    return _rank(state, w, t, pool, rooms)


def _rank(
    state: ClusterState,
    w: Workload,
    t: str | None,
    pool: Sequence[int],
    rooms: dict[int, int] | None = None,
) -> tuple[int, list[tuple[int, int]]] | None:
    ranked: list[tuple[int, int, int, int]] = []
    for n in pool:
        room = room_on(state, n, w, t)
        if rooms is not None:
            room = min(room, rooms.get(n, 0))
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
    """Workers of ``w`` that ``node`` could host when empty: on its healthy accelerators only
    (counting the unhealthy ones held too few nodes for a gang, and backfill took a node the
    head needed)."""
    req = w.request
    room = w.gang
    if t is not None:
        count = state.healthy_count(node, t)
        room = count // req.gpus if req.gpus else count
    if req.cpu_milli:
        room = min(room, state.cap_cpu[node] // req.cpu_milli)
    if req.memory_mib:
        room = min(room, state.cap_mem[node] // req.memory_mib)
    return room


def _free_part(
    state: ClusterState, node: int, w: Workload, t: str | None, workers: int
) -> list[Alloc]:
    """What is free now on ``node`` of what ``workers`` workers of ``w`` will need there.

    Whole GPUs are held idle ones first, then the free part of shared ones (most free first)
    until the head's count is reached: a shared GPU the head will need once its tenants end
    must not take new tenants meanwhile, or backfilled work would delay the head.
    """
    req = w.request
    held: list[Alloc] = []
    gpus: tuple[int, ...] = ()
    if t is not None and req.gpus:
        shares = sorted(
            ((f, g) for g, f in enumerate(state.gpu_free[node]) if state.gpu_type[node][g] == t),
            reverse=True,
        )
        needed = [(f, g) for f, g in shares if f > 0][: req.gpus * workers]
        gpus = tuple(sorted(g for f, g in needed if f == WHOLE))
        held = [Alloc(node, (g,), f, 0, 0) for f, g in needed if f < WHOLE]
    elif t is not None and req.gpu_milli:
        held = _shares_for(state, node, t, req.gpu_milli, workers)
    cpu = min(max(0, state.free_cpu[node]), req.cpu_milli * workers)
    mem = min(max(0, state.free_mem[node]), req.memory_mib * workers)
    if gpus or cpu or mem:
        held.append(Alloc(node, gpus, WHOLE, cpu, mem))
    return held


def _shares_for(state: ClusterState, node: int, t: str, milli: int, workers: int) -> list[Alloc]:
    """Each fractional worker holds its share on the ``t`` GPU with the most left free."""
    free = {
        g: f for g, f in enumerate(state.gpu_free[node]) if f > 0 and state.gpu_type[node][g] == t
    }
    held: list[Alloc] = []
    for _ in range(workers):
        if not free:
            break
        g = max(free, key=lambda k: (free[k], k))
        take = min(free[g], milli)
        held.append(Alloc(node, (g,), take, 0, 0))
        free[g] -= take
        if not free[g]:
            del free[g]
    return held

"""Where a worker goes: first-fit, or fragmentation-aware packing (see :mod:`.fragmentation`).

Fragmentation-aware packing walks the cluster index in the order the GPU-only measure
prefers (index buckets, never a scan of every node), scores the first few nodes of each
accelerator type that can host the worker (:data:`CANDIDATES_PER_TYPE`,
:data:`WHOLE_CANDIDATES_PER_TYPE`) with the full measure (CPUs and memory included), and takes
the one whose fragmentation grows least.
Two rules hold regardless of the score: a fraction goes onto an already shared GPU if one can
take it, before it breaks a whole GPU; a whole-GPU request only ever takes whole free GPUs.
With the energy-aware option the first accelerator type (lowest power) that can host the
worker wins; otherwise every allowed type competes on the score.

Gangs are placed on as few nodes as possible (nodes with the most free GPUs first), and
either every worker is allocated or none is.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Sequence

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.fragmentation import FragModel
from underlay.compute.scheduler.snapshot import WHOLE, Request

CANDIDATES_PER_TYPE = 8
"""Nodes scored per accelerator type for a fractional worker: bounds the cost of a placement."""

WHOLE_CANDIDATES_PER_TYPE = 4
"""The same for a whole-GPU worker, whose candidates in one index bucket differ only by host
resources, so fewer of them tell the measure apart."""

Cursors = dict[tuple[object, ...], int]
"""First-fit scan positions per request shape: capacity only shrinks within a round, so a node
that could not take a shape once cannot take it later in the same round."""


def place_workers(
    state: ClusterState,
    req: Request,
    workers: int,
    types: Sequence[str | None],
    model: FragModel | None,
    cursors: Cursors | None,
    ranked: bool = False,
) -> tuple[str | None, list[Alloc]] | None:
    """Allocate all ``workers`` (each ``req``) on one of ``types``, or none of them.

    ``cursors`` None selects fragmentation-aware packing, a dict selects first-fit; ``ranked``
    means the first type that fits wins (energy-aware order). Returns the type and the
    allocations, already applied to ``state``.
    """
    if workers == 1:
        if cursors is None and (req.gpus or req.gpu_milli):  # choose(), one call less
            typed = types if None not in types else [t for t in types if t is not None]
            alloc = _choose_scored(state, req, typed, model, ranked)
        else:
            alloc = choose(state, req, types, model, cursors, ranked)
        if alloc is None:
            return None
        state.allocate(alloc)
        return _type_of(state, alloc), [alloc]
    for t in types:
        if req.gpus and cursors is None and t is not None:
            allocs = _gang_fewest_nodes(state, req, workers, t)
        else:
            allocs = _one_by_one(state, req, workers, t, model, cursors)
        if allocs is not None:
            return t, allocs
    return None


def _one_by_one(
    state: ClusterState,
    req: Request,
    workers: int,
    t: str | None,
    model: FragModel | None,
    cursors: Cursors | None,
) -> list[Alloc] | None:
    done: list[Alloc] = []
    for _ in range(workers):
        alloc = choose(state, req, [t], model, cursors, False, workers)
        if alloc is None:
            for a in reversed(done):
                state.release(a)
            return None
        state.allocate(alloc)
        done.append(alloc)
    return done


def _type_of(state: ClusterState, alloc: Alloc) -> str | None:
    return state.gpu_type[alloc.node][alloc.gpus[0]] if alloc.gpus else None


def choose(
    state: ClusterState,
    req: Request,
    types: Sequence[str | None],
    model: FragModel | None,
    cursors: Cursors | None,
    ranked: bool = False,
    gang: int = 1,
) -> Alloc | None:
    """One worker's allocation (not applied), or None if it fits nowhere now."""
    if not req.gpus and not req.gpu_milli:
        if cursors is not None:
            return _first_fit(state, req, None, cursors, gang)
        return _choose_host(state, req, model)
    if cursors is not None:
        for t in types:
            alloc = _first_fit(state, req, t, cursors, gang)
            if alloc is not None:
                return alloc
        return None
    return _choose_scored(state, req, [t for t in types if t is not None], model, ranked)


def _first_fit(
    state: ClusterState, req: Request, gpu_type: str | None, cursors: Cursors, gang: int
) -> Alloc | None:
    nodes: Sequence[int] = (
        state.nodes_of_type.get(gpu_type, ()) if gpu_type is not None else range(len(state.names))
    )
    key = (gpu_type, req.gpus, req.gpu_milli, req.cpu_milli, req.memory_mib, gang)
    for i in range(cursors.get(key, 0), len(nodes)):
        alloc = state.alloc_on(nodes[i], req, gpu_type)
        if alloc is not None:
            cursors[key] = i
            return alloc
    cursors[key] = len(nodes)
    return None


def _choose_host(state: ClusterState, req: Request, model: FragModel | None) -> Alloc | None:
    """Work without accelerators goes to a CPU-only node if one fits; otherwise to the GPU
    node whose free GPUs its CPUs and memory strand least."""
    for node in state.cpu_only:
        if state.available(node) and state.fits_host(node, req):
            return Alloc(node, (), 0, req.cpu_milli, req.memory_mib)
    best, best_delta = -1, 0.0
    for node, types in enumerate(state.gpu_type):
        if not types or not state.available(node) or not state.fits_host(node, req):
            continue
        delta = 0.0 if model is None else _host_delta(state, node, req, model)
        if best < 0 or delta < best_delta:
            best, best_delta = node, delta
            if delta <= 0.0:
                break  # nothing can do better than stranding nothing
    return None if best < 0 else Alloc(best, (), 0, req.cpu_milli, req.memory_mib)


def _host_delta(state: ClusterState, node: int, req: Request, model: FragModel) -> float:
    frees = state.gpu_free[node]
    cpu, mem = state.free_cpu[node], state.free_mem[node]
    delta = 0.0
    for t in set(state.gpu_type[node]):
        own = [f for f, x in zip(frees, state.gpu_type[node], strict=True) if x == t and f > 0]
        if not own:
            continue
        k = own.count(WHOLE)
        partial = tuple(sorted(f for f in own if f < WHOLE))
        after = (k, partial, cpu - req.cpu_milli, mem - req.memory_mib)
        delta += model.node(after) - model.node((k, partial, cpu, mem))
    return delta


def _choose_scored(
    state: ClusterState,
    req: Request,
    types: Sequence[str | None],
    model: FragModel | None,
    ranked: bool,
) -> Alloc | None:
    best: tuple[int, int, str] | None = None
    best_key: tuple[int, int, float] | None = None
    limit = WHOLE_CANDIDATES_PER_TYPE if req.gpus else CANDIDATES_PER_TYPE
    versions, memo = state.versions, state.best
    for rank, t in enumerate(types):
        assert t is not None  # the caller leaves out None
        # A type's answer (see _scan_type) holds until a node with that type changes.
        shape = (t, req.gpus, req.gpu_milli, req.cpu_milli, req.memory_mib, model is None)
        version = versions.get(t, 0)
        known = memo.get(shape)
        if known is not None and known[0] == version:
            found = known[1]
        else:
            found = _scan_type(state, req, t, model, limit)
            memo[shape] = (version, found)
        if found is not None:
            kind, delta, node, gpu = found
            # Types are tried in order, so on a tie the earlier type keeps its place.
            key = (rank if ranked else 0, kind, delta)
            if best_key is None or key < best_key:
                best, best_key = (node, gpu, t), key
        if ranked and best is not None:
            break
    if best is None:
        return None
    node, gpu, t = best
    if req.gpus:
        return state.whole_on(node, req, t)
    if gpu < 0:
        gpu = next(
            g
            for g, f in enumerate(state.gpu_free[node])
            if f == WHOLE and state.gpu_type[node][g] == t
        )
    return Alloc(node, (gpu,), req.gpu_milli, req.cpu_milli, req.memory_mib)


Best = tuple[int, float, int, int] | None
"""(kind, score, node, gpu) of a type's best candidate, or None; see :func:`_scan_type`."""


def _scan_type(
    state: ClusterState, req: Request, t: str, model: FragModel | None, limit: int
) -> Best:
    """(kind, score, node, gpu) of the best of the first ``limit`` candidates of type ``t``
    that have the host resources, in GPU-only preference order (the first on a tie); kind 0
    is a shared GPU, gpu -1 whole free GPUs of the node.

    What it reads (the type's index buckets, and the free share, CPUs, memory and scores of
    nodes with that type) changes only when a node with that type does, which bumps the
    type's version: until then the answer found for a worker shape is the answer
    (:func:`_choose_scored` keeps it). A worker that takes any type looks at every type, and
    a placement changes only one of them.
    """
    # The hot loop of a round: each candidate's score is looked up in its node's cache
    # (keyed by type and worker shape, and the share used for a shared GPU) in place.
    free_cpu, free_mem = state.free_cpu, state.free_mem
    cpu, mem = req.cpu_milli, req.memory_mib
    buckets = state.full.get(t, [])
    scores = state.scores
    wkey = (t, req.gpus, req.gpu_milli, cpu, mem)
    best: Best = None
    scored = 0
    if not req.gpus:
        partial = state.partial.get(t, {})
        gpu_free = state.gpu_free
        for s in _share_order(t, req.gpu_milli, partial, model):
            for node, gpu in partial[s]:
                if free_cpu[node] < cpu or free_mem[node] < mem:
                    continue
                if model is None:
                    return (0, 0.0, node, gpu)  # every score is 0: the first one wins
                share = gpu_free[node][gpu]
                here = scores[node]
                if here is None:
                    here = scores[node] = {}
                key = (wkey, share)
                known = here.get(key)
                if known is None:
                    known = here[key] = _state_delta(state, node, t, req, share, model)
                if best is None or known < best[1]:
                    best = (0, known, node, gpu)
                scored += 1
                if scored >= limit:
                    return best
    order = _bucket_order(max(1, req.gpus), len(buckets), model)
    if model is None:  # every score is 0: the first candidate wins
        for k in order:
            for node in buckets[k]:
                if free_cpu[node] >= cpu and free_mem[node] >= mem:
                    return (1, 0.0, node, -1)
        return None
    for k in order:
        for node in buckets[k]:
            if free_cpu[node] < cpu or free_mem[node] < mem:
                continue
            here = scores[node]
            if here is None:
                here = scores[node] = {}
            score = here.get(wkey)
            if score is None:
                score = here[wkey] = _state_delta(state, node, t, req, -1, model)
            # A candidate on a shared GPU (kind 0) always comes before a whole one (kind 1).
            if best is None or (best[0] == 1 and score < best[1]):
                best = (1, score, node, -1)
            scored += 1
            if scored >= limit:
                return best
    return best


def _bucket_order(g: int, n: int, model: FragModel | None) -> list[int]:
    """Buckets ``g..n-1`` of whole free GPUs in the order the GPU-only measure prefers
    (the least growth first); it depends on the model only, so it is worked out once."""
    if model is None:
        return list(range(g, n))
    key = ("full", g, n)
    order = model.orders.get(key)
    if order is None:
        order = sorted(range(g, n), key=lambda k: (model.full_term(k - g) - model.full_term(k), k))
        model.orders[key] = order
    return order


def _share_order(
    t: str, m: int, partial: dict[int, dict[tuple[int, int], None]], model: FragModel | None
) -> list[int]:
    """The free shares of partly used GPUs that can take ``m``, in the order the measure
    prefers. Share buckets are only ever added during a round, so their number says
    whether the order worked out earlier still holds."""
    if model is None:
        return sorted(s for s in partial if s >= m)
    key = ("part", t, m, len(partial))
    order = model.orders.get(key)
    if order is None:
        order = sorted(
            (s for s in partial if s >= m),
            key=lambda s: (model.part_term(s - m) - model.part_term(s), s),
        )
        model.orders[key] = order
    return order


def _state_delta(
    state: ClusterState, node: int, t: str, req: Request, share: int, model: FragModel
) -> float:
    before = state.node_state(node, t)
    key = (before, req.gpus, req.gpu_milli, req.cpu_milli, req.memory_mib, share)
    known = model.deltas.get(key)
    if known is not None:
        return known
    k, partial, cpu, mem = before
    cpu -= req.cpu_milli
    mem -= req.memory_mib
    if req.gpus:
        after = (k - req.gpus, partial, cpu, mem)
    else:
        shares = list(partial)
        if share >= 0:
            shares.remove(share)
            left = share - req.gpu_milli
        else:
            k -= 1
            left = WHOLE - req.gpu_milli
        if left > 0:
            insort(shares, left)
        after = (k, tuple(shares), cpu, mem)
    delta = model.deltas[key] = model.node(after) - model.node(before)
    return delta


def _gang_fewest_nodes(
    state: ClusterState, req: Request, workers: int, t: str | None
) -> list[Alloc] | None:
    if t is None:
        return None
    buckets = state.full.get(t, [])
    g = req.gpus
    # Candidate hosts, most whole free GPUs first, until they could hold the whole gang.
    hosts: list[tuple[int, int]] = []
    room = 0
    for k in range(len(buckets) - 1, g - 1, -1):
        for node in buckets[k]:
            fit = k // g
            if req.cpu_milli:
                fit = min(fit, state.free_cpu[node] // req.cpu_milli)
            if req.memory_mib:
                fit = min(fit, state.free_mem[node] // req.memory_mib)
            if fit > 0:
                hosts.append((node, fit))
                room += fit
        if room >= workers:
            break
    if room < workers:
        return None
    done: list[Alloc] = []
    for node, fit in hosts:
        for _ in range(min(fit, workers - len(done))):
            alloc = state.alloc_on(node, req, t)
            if alloc is None:
                break
            state.allocate(alloc)
            done.append(alloc)
        if len(done) == workers:
            return done
    for a in reversed(done):
        state.release(a)
    return None

"""Where a worker goes: first-fit, or fragmentation-aware packing in the spirit of FGD.

FGD (Weng et al., ATC '23) scores a node by the *expected* number of its free GPUs that the
workloads the cluster typically sees could not use, and places each task where that number
grows least. :class:`FragModel` keeps the same idea with a cheaper measure, so one decision
stays a few table look-ups per candidate:

- for a fractional shape asking ``m`` thousandths, a GPU with ``0 < free < m`` is fragmented;
- for a whole-GPU shape asking ``g`` GPUs, every partly used GPU is fragmented, and a node's
  ``k`` whole free GPUs are fragmented if ``k < g``.

The expected fragmentation weights each shape by how often it appears among pending and
running workloads. Candidates are scored per bucket of the cluster index (every node with
``k`` whole free GPUs scores the same; every GPU with the same free share scores the same),
not per node, which is what keeps packing cheap on thousands of nodes. CPU and memory are
checked only on the node finally chosen. The consequences are the FGD rules of thumb: a
fraction goes onto the shared GPU it fills best before it breaks a whole GPU, and a whole-GPU
request goes where it leaves the remaining free GPUs most usable.

Gangs are placed on as few nodes as possible (nodes with the most free GPUs first), and
either every worker is allocated or none is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from underlay.compute.scheduler.cluster import Alloc, ClusterState
from underlay.compute.scheduler.snapshot import WHOLE, Request


class FragModel:
    """Expected fragmentation of free accelerator capacity for a distribution of shapes."""

    def __init__(self, shapes: dict[tuple[int, int], int]) -> None:
        total = sum(shapes.values())
        self._whole: list[tuple[int, float]] = []
        self._frac: list[tuple[int, float]] = []
        for (gpus, milli), count in sorted(shapes.items()):
            p = count / total
            if gpus:
                self._whole.append((gpus, p))
            else:
                self._frac.append((milli, p))
        self._p_whole = sum(p for _, p in self._whole)
        self._full_memo: dict[int, float] = {}
        self._part_memo: dict[int, float] = {0: 0.0}

    @classmethod
    def of(cls, requests: Iterable[Request]) -> FragModel | None:
        """The model for these requests, or None if none of them asks for an accelerator."""
        shapes: dict[tuple[int, int], int] = {}
        for req in requests:
            if req.gpus or req.gpu_milli:
                key = (req.gpus, 0 if req.gpus else req.gpu_milli)
                shapes[key] = shapes.get(key, 0) + 1
        return cls(shapes) if shapes else None

    def full_term(self, k: int) -> float:
        """Expected fragmented thousandths among ``k`` whole free GPUs on one node."""
        value = self._full_memo.get(k)
        if value is None:
            value = sum(p for g, p in self._whole if g > k) * k * WHOLE
            self._full_memo[k] = value
        return value

    def part_term(self, free: int) -> float:
        """Expected fragmented thousandths of one partly used GPU with ``free`` left."""
        value = self._part_memo.get(free)
        if value is None:
            p = self._p_whole + sum(q for m, q in self._frac if free < m)
            value = p * free if 0 < free < WHOLE else 0.0
            self._part_memo[free] = value
        return value


Cursors = dict[tuple[object, ...], int]
"""First-fit scan positions per request shape: capacity only shrinks within a round, so a node
that could not take a shape once cannot take it later in the same round."""


def place_workers(
    state: ClusterState,
    req: Request,
    workers: int,
    gpu_type: str | None,
    model: FragModel | None,
    cursors: Cursors | None,
) -> list[Alloc] | None:
    """Allocate all ``workers`` (each ``req``) on ``gpu_type`` in ``state``, or none of them.

    ``cursors`` None selects fragmentation-aware packing; a dict selects first-fit.
    """
    if workers > 1 and req.gpus and cursors is None:
        return _gang_fewest_nodes(state, req, workers, gpu_type)
    done: list[Alloc] = []
    for _ in range(workers):
        alloc = choose(state, req, gpu_type, model, cursors, workers)
        if alloc is None:
            for a in reversed(done):
                state.release(a)
            return None
        state.allocate(alloc)
        done.append(alloc)
    return done


def choose(
    state: ClusterState,
    req: Request,
    gpu_type: str | None,
    model: FragModel | None,
    cursors: Cursors | None,
    gang: int = 1,
) -> Alloc | None:
    """One worker's allocation (not applied), or None if it fits nowhere now.

    With ``cursors`` (first-fit), the lowest-index node that fits; without, best fit or
    least fragmentation growth.
    """
    if cursors is not None:
        return _first_fit(state, req, gpu_type, cursors, gang)
    if gpu_type is None:
        return _choose_host(state, req)
    if req.gpus:
        return _choose_whole(state, req, gpu_type, model)
    return _choose_share(state, req, gpu_type, model)


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


def _choose_host(state: ClusterState, req: Request) -> Alloc | None:
    # Work without accelerators goes to CPU-only nodes first, so it does not strand the GPUs
    # of a GPU node by taking its CPUs.
    for node in (*state.cpu_only, *_gpu_nodes(state)):
        if state.available(node) and state.fits_host(node, req):
            return Alloc(node, (), 0, req.cpu_milli, req.memory_mib)
    return None


def _gpu_nodes(state: ClusterState) -> Iterable[int]:
    for node, types in enumerate(state.gpu_type):
        if types:
            yield node


def _choose_whole(
    state: ClusterState, req: Request, t: str, model: FragModel | None
) -> Alloc | None:
    buckets = state.full.get(t, [])
    g = req.gpus
    ks = [k for k in range(g, len(buckets)) if buckets[k]]
    if model is not None:
        ks.sort(key=lambda k: (model.full_term(k - g) - model.full_term(k), k))
    for k in ks:
        for node in buckets[k]:
            if state.fits_host(node, req):
                return state.alloc_on(node, req, t)
    return None


def _choose_share(
    state: ClusterState, req: Request, t: str, model: FragModel | None
) -> Alloc | None:
    m = req.gpu_milli
    # (kind, delta, key): shared GPUs (kind 0) always before breaking a whole one (kind 1).
    candidates: list[tuple[int, float, int]] = []
    for free, members in state.partial.get(t, {}).items():
        if free >= m and members:
            delta = 0.0 if model is None else model.part_term(free - m) - model.part_term(free)
            candidates.append((0, delta, free))
    buckets = state.full.get(t, [])
    for k in range(1, len(buckets)):
        if buckets[k]:
            delta = 0.0
            if model is not None:
                delta = model.full_term(k - 1) - model.full_term(k) + model.part_term(WHOLE - m)
            candidates.append((1, delta, k))
    candidates.sort()
    for kind, _, key in candidates:
        if kind == 0:
            for node, gpu in state.partial[t][key]:
                if state.fits_host(node, req):
                    return Alloc(node, (gpu,), m, req.cpu_milli, req.memory_mib)
        else:
            for node in buckets[key]:
                if state.fits_host(node, req):
                    return _whole_gpu_share(state, node, req, t)
    return None


def _whole_gpu_share(state: ClusterState, node: int, req: Request, t: str) -> Alloc | None:
    for gpu, free in enumerate(state.gpu_free[node]):
        if free == WHOLE and state.gpu_type[node][gpu] == t:
            return Alloc(node, (gpu,), req.gpu_milli, req.cpu_milli, req.memory_mib)
    return None


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

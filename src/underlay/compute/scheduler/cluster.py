"""The mutable working copy of the cluster that one ``decide`` call allocates from.

Built from the snapshot's nodes at the start of a call and thrown away at the end, so the
policy stays a pure function. It keeps the indexes that make a decision over thousands of
nodes cheap:

- per accelerator type, nodes bucketed by how many whole healthy accelerators they have free
  (``full[type][k]``), so a request for ``g`` GPUs looks at buckets ``k >= g`` instead of
  scanning every node;
- per type, partly used accelerators bucketed by their free share (``partial[type][share]``),
  so a fractional request finds an already shared GPU it fits on without a scan.

Unhealthy nodes and accelerators are never indexed, which is how the health rule is enforced:
nothing can choose them. Reserved nodes (held for a blocked head of the queue) are taken out
of the indexes too. Allocation and release are exact inverses, so preemption planning can
release victims, try a placement, and put everything back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from underlay.compute.scheduler.fragmentation import NodeState
from underlay.compute.scheduler.snapshot import WHOLE, Node, NodeProfile, Request


@dataclass(frozen=True, slots=True)
class Alloc:
    """One worker's allocation on node index ``node``: accelerator indexes and the share each."""

    node: int
    gpus: tuple[int, ...]
    milli: int
    cpu_milli: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class HostClass:
    """``count`` nodes with the same CPUs, memory and accelerators per type."""

    count: int
    cpu_milli: int
    memory_mib: int
    accelerators: dict[str, int]


class ClusterState:
    """Free capacity and its indexes; see the module docstring.

    Built on every round, so it does the least it can eagerly (comprehensions over the cached
    :attr:`Node.profile`, and the free-capacity indexes); whatever only some rounds need
    (per-type node lists, totals, power) is worked out on first use.
    """

    def __init__(self, nodes: tuple[Node, ...]) -> None:
        profiles = [n.profile for n in nodes]
        self._profiles = profiles
        self.names: list[str] = [n.name for n in nodes]
        self.cap_cpu = [n.cpu_milli for n in nodes]
        self.cap_mem = [n.memory_mib for n in nodes]
        self.free_cpu = [n.free_cpu_milli for n in nodes]
        self.free_mem = [n.free_memory_mib for n in nodes]
        self.usable = [n.healthy for n in nodes]
        self.reserved = [False] * len(nodes)
        # Free share per accelerator; -1 marks an unhealthy one (never indexed, never chosen).
        # Tuples shared with the profiles until a round writes to a node (copy on write).
        self.gpu_free: list[Sequence[int]] = [p.frees for p in profiles]
        self.gpu_type: list[tuple[str, ...]] = [p.types for p in profiles]
        self._full_count: list[dict[str, int] | None] = [None] * len(nodes)
        self.per_type: list[tuple[tuple[str, int], ...]] = [p.per_type for p in profiles]
        self.full: dict[str, list[dict[int, None]]] = {}
        self.partial: dict[str, dict[int, dict[tuple[int, int], None]]] = {}
        self._index_free(profiles)
        self._classes: list[HostClass] | None = None
        self._states: dict[tuple[int, str], NodeState] = {}
        self.scores: list[dict[object, float] | None] = [None] * len(nodes)
        """Per node: packing scores by (type, worker shape[, share used]), until the node
        changes."""
        self.versions: dict[str, int] = {}
        """Per accelerator type: how many times a node with that type changed (allocation,
        release, reservation). What packing found for a type still holds while it is equal."""
        self.best: dict[tuple[object, ...], tuple[int, tuple[int, float, int, int] | None]] = {}
        """Packing's best candidate per (type, worker shape), with the version it was found at."""
        self.max_cpu = max(self.cap_cpu, default=0)
        self.max_mem = max(self.cap_mem, default=0)

    def _index_free(self, profiles: list[NodeProfile]) -> None:
        # The one loop over every node of every round: keep it to the free-capacity indexes.
        full, partial, usable = self.full, self.partial, self.usable
        for i, prof in enumerate(profiles):
            for t, free, g in prof.partial:
                partial.setdefault(t, {}).setdefault(free, {})[(i, g)] = None
            if not usable[i]:
                continue
            for t, k in prof.full:
                if k:
                    buckets = full.get(t)
                    if buckets is None:
                        buckets = full[t] = [{}]
                    while len(buckets) <= k:
                        buckets.append({})
                    buckets[k][i] = None

    @cached_property
    def index(self) -> dict[str, int]:
        """Node name to index."""
        return {name: i for i, name in enumerate(self.names)}

    @cached_property
    def nodes_of_type(self) -> dict[str, list[int]]:
        """Nodes with accelerators of each type, in snapshot order."""
        out: dict[str, list[int]] = {}
        for i, per in enumerate(self.per_type):
            for t, _ in per:
                out.setdefault(t, []).append(i)
        return out

    @cached_property
    def cpu_only(self) -> list[int]:
        return [i for i, types in enumerate(self.gpu_type) if not types]

    @cached_property
    def type_total(self) -> dict[str, int]:
        """Accelerators of each type in the cluster, healthy or not."""
        out: dict[str, int] = {}
        for cls in self.host_classes():
            for t, n in cls.accelerators.items():
                out[t] = out.get(t, 0) + n * cls.count
        return out

    @cached_property
    def type_max_per_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cls in self.host_classes():
            for t, n in cls.accelerators.items():
                out[t] = max(out.get(t, 0), n)
        return out

    @cached_property
    def types(self) -> list[str]:
        return sorted(self.type_total)

    @cached_property
    def power(self) -> dict[str, float]:
        """Busy power per accelerator type (from the first accelerator that has a model)."""
        out: dict[str, float] = {}
        wanted = len(self.types)
        for prof in self._profiles:
            for t, watts in prof.power:
                out.setdefault(t, watts)
            if len(out) >= wanted:
                break
        return out

    def full_count(self, node: int) -> dict[str, int]:
        """Whole free healthy accelerators per type on ``node``."""
        counts = self._full_count[node]
        if counts is None:
            counts = self._full_count[node] = dict(self._profiles[node].full)
        return counts

    def _writable(self, node: int) -> list[int]:
        frees = self.gpu_free[node]
        if not isinstance(frees, list):
            frees = list(frees)
            self.gpu_free[node] = frees
        return frees

    def node_state(self, node: int, t: str) -> NodeState:
        """(whole free, sorted shared free shares, free CPU, free memory) of ``t`` on ``node``:
        what the fragmentation measure looks at; cached until the node's allocation changes."""
        key = (node, t)
        known = self._states.get(key)
        if known is None:
            frees = self.gpu_free[node]
            if len(self.per_type[node]) == 1:  # the usual node: every accelerator is a ``t``
                own = [f for f in frees if f > 0]
            else:
                types = self.gpu_type[node]
                own = [f for g, f in enumerate(frees) if f > 0 and types[g] == t]
            whole = own.count(WHOLE)
            shared = tuple(sorted([f for f in own if f < WHOLE])) if whole < len(own) else ()
            known = (whole, shared, self.free_cpu[node], self.free_mem[node])
            self._states[key] = known
        return known

    def _changed(self, node: int) -> None:
        states, versions = self._states, self.versions
        for t, _ in self.per_type[node]:
            if states:
                states.pop((node, t), None)
            versions[t] = versions.get(t, 0) + 1
        self.scores[node] = None

    def type_count(self, node: int, t: str) -> int:
        """How many ``t`` accelerators ``node`` has (healthy or not)."""
        for name, count in self.per_type[node]:
            if name == t:
                return count
        return 0

    def healthy_count(self, node: int, t: str) -> int:
        """How many healthy ``t`` accelerators ``node`` has (free or not)."""
        types = self.gpu_type[node]
        return sum(1 for g, f in enumerate(self.gpu_free[node]) if f >= 0 and types[g] == t)

    def host_classes(self) -> list[HostClass]:
        """Nodes grouped by identical total hardware, for capacity questions about an empty
        cluster (a thousand nodes are usually a handful of classes)."""
        if self._classes is None:
            counts: dict[tuple[int, int, tuple[tuple[str, int], ...]], int] = {}
            for prof in self._profiles:
                key = prof.host_key
                counts[key] = counts.get(key, 0) + 1
            self._classes = [
                HostClass(count, cpu, mem, dict(per)) for (cpu, mem, per), count in counts.items()
            ]
        return self._classes

    # -- index maintenance ------------------------------------------------------------

    def _bucket(self, t: str, node: int, old: int, new: int) -> None:
        buckets = self.full.get(t)
        if buckets is None:
            buckets = self.full[t] = [{}]
        if old > 0:
            buckets[old].pop(node, None)
        if new > 0:
            while len(buckets) <= new:
                buckets.append({})
            buckets[new][node] = None

    def _set_gpu(self, node: int, gpu: int, new: int) -> None:
        frees = self._writable(node)
        old = frees[gpu]
        if old == new or old < 0:  # unhealthy accelerators stay out of every index
            return
        new = min(WHOLE, new)
        t = self.gpu_type[node][gpu]
        frees[gpu] = new
        if self.reserved[node] or not self.usable[node]:
            if old == WHOLE or new == WHOLE:
                self.full_count(node)[t] += 1 if new == WHOLE else -1
            return
        if 0 < old < WHOLE:
            self.partial[t][old].pop((node, gpu), None)
        if 0 < new < WHOLE:
            self.partial.setdefault(t, {}).setdefault(new, {})[(node, gpu)] = None
        if old == WHOLE or new == WHOLE:
            counts = self.full_count(node)
            count = counts[t]
            after = count + (1 if new == WHOLE else -1)
            counts[t] = after
            self._bucket(t, node, count, after)

    def reserve(self, node: int) -> None:
        """Hold a node for a blocked workload: nothing else in this round can use it."""
        if self.reserved[node] or not self.usable[node]:
            return
        self._changed(node)
        for t, count in self.full_count(node).items():
            self._bucket(t, node, count, 0)
        for gpu, free in enumerate(self.gpu_free[node]):
            if 0 < free < WHOLE:
                self.partial[self.gpu_type[node][gpu]][free].pop((node, gpu), None)
        self.reserved[node] = True

    def available(self, node: int) -> bool:
        return self.usable[node] and not self.reserved[node]

    # -- allocation -----------------------------------------------------------------------

    def allocate(self, alloc: Alloc) -> None:
        n = alloc.node
        self._changed(n)
        self.free_cpu[n] -= alloc.cpu_milli
        self.free_mem[n] -= alloc.memory_mib
        if alloc.gpus:
            self._shift(n, alloc.gpus, -alloc.milli)

    def release(self, alloc: Alloc) -> None:
        n = alloc.node
        self._changed(n)
        self.free_cpu[n] += alloc.cpu_milli
        self.free_mem[n] += alloc.memory_mib
        if alloc.gpus:
            self._shift(n, alloc.gpus, alloc.milli)

    def _shift(self, node: int, gpus: tuple[int, ...], delta: int) -> None:
        """Add ``delta`` to the free share of each of ``gpus`` on ``node``: what
        :meth:`_set_gpu` does GPU by GPU, with the node moved between whole-free buckets once
        per type (to the same place: the end of its final bucket) instead of once per GPU."""
        frees = self.gpu_free[node]
        if not isinstance(frees, list):  # _writable, inlined
            frees = self.gpu_free[node] = list(frees)
        types = self.gpu_type[node]
        indexed = self.usable[node] and not self.reserved[node]
        partial = self.partial
        moved: dict[str, int] = {}
        for g in gpus:
            old = frees[g]
            new = old + delta
            if old == new or old < 0:  # unhealthy accelerators stay out of every index
                continue
            new = min(WHOLE, new)
            t = types[g]
            frees[g] = new
            if indexed:
                if 0 < old < WHOLE:
                    partial[t][old].pop((node, g), None)
                if 0 < new < WHOLE:
                    partial.setdefault(t, {}).setdefault(new, {})[(node, g)] = None
            if old == WHOLE or new == WHOLE:
                moved[t] = moved.get(t, 0) + (1 if new == WHOLE else -1)
        if not moved:
            return
        counts = self.full_count(node)
        for t, change in moved.items():
            count = counts[t]
            counts[t] = count + change
            if indexed and change:
                self._bucket(t, node, count, count + change)

    def fits_host(self, node: int, req: Request, workers: int = 1) -> bool:
        return (
            self.free_cpu[node] >= req.cpu_milli * workers
            and self.free_mem[node] >= req.memory_mib * workers
        )

    def alloc_on(self, node: int, req: Request, gpu_type: str | None) -> Alloc | None:
        """The allocation for one worker on ``node`` if it fits there now, else None.

        Whole GPUs take the lowest-index free ones; a fraction takes the tightest shared GPU
        it fits on (packing shared GPUs first) before it breaks into a whole free one.
        """
        if not self.available(node) or not self.fits_host(node, req):
            return None
        if req.gpus == 0 and req.gpu_milli == 0:
            return Alloc(node, (), 0, req.cpu_milli, req.memory_mib)
        if req.gpus and gpu_type is not None and self.full_count(node).get(gpu_type, 0) < req.gpus:
            return None
        frees = self.gpu_free[node]
        types = self.gpu_type[node]
        if req.gpus:
            if len(self.per_type[node]) == 1:  # one type, and full_count said it may be it
                picked = [i for i, f in enumerate(frees) if f == WHOLE]
            else:
                picked = [
                    i for i, f in enumerate(frees) if f == WHOLE and (gpu_type in (None, types[i]))
                ]
            if len(picked) < req.gpus:
                return None
            if gpu_type is None:  # one type per worker
                first = types[picked[0]]
                picked = [i for i in picked if types[i] == first]
                if len(picked) < req.gpus:
                    return None
            return Alloc(node, tuple(picked[: req.gpus]), WHOLE, req.cpu_milli, req.memory_mib)
        best = -1
        for i, f in enumerate(frees):
            fits = f >= req.gpu_milli and gpu_type in (None, types[i])
            if fits and (best < 0 or f < frees[best]):
                best = i
        if best < 0:
            return None
        return Alloc(node, (best,), req.gpu_milli, req.cpu_milli, req.memory_mib)

    def whole_on(self, node: int, req: Request, t: str) -> Alloc | None:
        """:meth:`alloc_on` for ``req.gpus`` whole ``t`` accelerators on a node that the
        whole-free index lists as available with that many, and whose CPUs and memory were
        checked since it last changed (packing's pick): the same allocation, without
        checking those again."""
        frees = self.gpu_free[node]
        if len(self.per_type[node]) == 1:
            picked = [i for i, f in enumerate(frees) if f == WHOLE]
        else:
            types = self.gpu_type[node]
            picked = [i for i, f in enumerate(frees) if f == WHOLE and types[i] == t]
        if len(picked) < req.gpus:
            return self.alloc_on(node, req, t)
        return Alloc(node, tuple(picked[: req.gpus]), WHOLE, req.cpu_milli, req.memory_mib)

    def most_free(self, t: str) -> int:
        """The most whole free ``t`` accelerators on one available node."""
        buckets = self.full.get(t, [])
        for k in range(len(buckets) - 1, 0, -1):
            if buckets[k]:
                return k
        return 0

    def largest_share(self, t: str) -> int:
        """The largest free share of one ``t`` accelerator, whole ones included."""
        if self.most_free(t):
            return WHOLE
        shares = [s for s, members in self.partial.get(t, {}).items() if members]
        return max(shares, default=0)

    def free_gpus(self) -> dict[str, int]:
        """Free healthy accelerator thousandths per type, reserved nodes included."""
        out: dict[str, int] = {}
        for n, frees in enumerate(self.gpu_free):
            if not self.usable[n]:
                continue
            for i, f in enumerate(frees):
                if f > 0:
                    t = self.gpu_type[n][i]
                    out[t] = out.get(t, 0) + f
        return out

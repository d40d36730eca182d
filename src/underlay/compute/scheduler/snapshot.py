"""What the scheduling policy sees: a frozen, serialisable snapshot of the cluster and its queue.

The policy (:func:`underlay.compute.scheduler.decide`) is a pure function of a
:class:`Snapshot`. The live loop builds one from the metadata database, the trace simulator
builds one from its virtual cluster; both hand it to the same function. Everything here is a
frozen dataclass of plain values (str, int, float, bool, tuples of these), so a snapshot can
be logged, stored as JSON (:mod:`.codec`) and replayed to explain a decision later.

Units are integers wherever sums must be exact: CPUs in thousandths (``cpu_milli``), memory
in MiB, and accelerator shares in thousandths of one device (``1000`` is a whole GPU). Times
are seconds on the caller's clock (epoch seconds live, virtual seconds in the simulator).

Free capacity is carried on the nodes (``free_cpu_milli``, ``Accelerator.free_milli``), as the
node agents report it, rather than re-derived from running placements: deriving it costs
O(running) on every call and the live loop already holds it. The producer keeps the two
consistent; running placements are used for preemption and quota accounting only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

WHOLE = 1000
"""One whole accelerator, in thousandths."""


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Power draw of one accelerator: idle, and at full use (linear in between)."""

    idle_watts: float
    busy_watts: float


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One GPU (or other accelerator) on a node.

    ``free_milli`` is the unallocated share, 0..1000; ``healthy`` False keeps the policy off it.
    """

    type: str
    memory_mib: int
    free_milli: int = WHOLE
    healthy: bool = True
    power: PowerModel | None = None


@dataclass(frozen=True, slots=True)
class NodeProfile:
    """What the policy derives from one node, computed once per :class:`Node` object.

    ``frees`` has -1 for an unhealthy accelerator; ``per_type`` and ``full`` count all and
    whole free accelerators per type; ``partial`` lists (type, free share, index) of partly
    used ones; ``host_key`` identifies nodes with the same total hardware.
    """

    frees: tuple[int, ...]
    types: tuple[str, ...]
    per_type: tuple[tuple[str, int], ...]
    full: tuple[tuple[str, int], ...]
    partial: tuple[tuple[str, int, int], ...]
    power: tuple[tuple[str, float], ...]
    host_key: tuple[int, int, tuple[tuple[str, int], ...]]


@dataclass(frozen=True)
class Node:
    """A machine: capacity, what is free now, its accelerators, and whether it is healthy.

    ``labels`` are ``key=value`` strings (``zone=a``) that a workload's ``node_selector``
    must all find here.

    Not slotted, so that :attr:`profile` can be cached on the object: a caller that keeps the
    Node objects of unchanged machines between rounds (the simulator does) pays for deriving
    them once, not once per round. The cache is a pure function of the frozen fields.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    free_cpu_milli: int
    free_memory_mib: int
    accelerators: tuple[Accelerator, ...] = ()
    healthy: bool = True
    labels: tuple[str, ...] = ()

    @cached_property
    def profile(self) -> NodeProfile:
        accs = self.accelerators
        if self.healthy:
            frees = tuple([min(WHOLE, max(0, a.free_milli)) if a.healthy else -1 for a in accs])
        else:
            frees = (-1,) * len(accs)
        types = tuple([a.type for a in accs])
        kinds = set(types)
        if len(kinds) == 1:  # the usual node: one accelerator type, no loop over dicts
            t = types[0]
            per_type: tuple[tuple[str, int], ...] = ((t, len(types)),)
            full: tuple[tuple[str, int], ...] = ((t, frees.count(WHOLE)),)
            partial = tuple([(t, f, g) for g, f in enumerate(frees) if 0 < f < WHOLE])
            watts = next((a.power.busy_watts for a in accs if a.power is not None), None)
            power: tuple[tuple[str, float], ...] = () if watts is None else ((t, watts),)
            return NodeProfile(
                frees,
                types,
                per_type,
                full,
                partial,
                power,
                (self.cpu_milli, self.memory_mib, per_type),
            )
        per: dict[str, int] = {}
        whole: dict[str, int] = {}
        powers: dict[str, float] = {}
        shared: list[tuple[str, int, int]] = []
        for g, (t, f) in enumerate(zip(types, frees, strict=True)):
            per[t] = per.get(t, 0) + 1
            whole[t] = whole.get(t, 0) + (1 if f == WHOLE else 0)
            if 0 < f < WHOLE:
                shared.append((t, f, g))
            p = accs[g].power
            if p is not None and t not in powers:
                powers[t] = p.busy_watts
        per_type = tuple(sorted(per.items()))
        return NodeProfile(
            frees,
            types,
            per_type,
            tuple(sorted(whole.items())),
            tuple(shared),
            tuple(sorted(powers.items())),
            (self.cpu_milli, self.memory_mib, per_type),
        )

    @classmethod
    def idle(
        cls, name: str, cpu_milli: int, memory_mib: int, accelerators: tuple[Accelerator, ...] = ()
    ) -> Node:
        """A node with nothing allocated on it."""
        return cls(name, cpu_milli, memory_mib, cpu_milli, memory_mib, accelerators)


@dataclass(frozen=True, slots=True)
class Request:
    """What one worker of a workload needs.

    Either ``gpus`` whole accelerators, or (with ``gpus == 0``) ``gpu_milli`` thousandths of one
    accelerator's memory and time; ``gpu_type`` None accepts any type.
    """

    cpu_milli: int = 0
    memory_mib: int = 0
    gpus: int = 0
    gpu_milli: int = 0
    gpu_type: str | None = None

    @property
    def gpu_share(self) -> int:
        """Accelerator thousandths per worker (whole GPUs count 1000 each)."""
        return self.gpus * WHOLE if self.gpus else self.gpu_milli


@dataclass(frozen=True, slots=True)
class Workload:
    """A job as the queue knows it: who asked, for what, how urgent, and how much it already ran.

    ``gang`` workers, each with ``request``, start together or not at all. ``priority`` is the
    priority class inside the project (higher first). A workload that is not ``preemptible``
    (a service, an interactive session) is never chosen as a victim, and so never borrows
    capacity it could not give back. ``attained_service`` is accelerator-
    seconds (shares times seconds) already received in earlier runs; the policy never needs a
    duration estimate. ``displaced`` lists the workloads already preempted for this one (the
    caller adds each victim of a :class:`~underlay.compute.scheduler.decisions.Preempt` to its
    claimant): none of them is ever preempted for it again.

    Constraints (:mod:`.constraints`): ``node_selector`` lists ``key=value`` labels every node
    it runs on must carry; ``max_per_node`` caps the workers of ``app`` (of this workload
    when ``app`` is None) on one node, running work included.
    """

    id: str
    project: str
    request: Request
    gang: int = 1
    priority: int = 0
    deferrable: bool = False
    submit_time: float = 0.0
    attained_service: float = 0.0
    preemptible: bool = True
    displaced: tuple[str, ...] = ()
    app: str | None = None
    max_per_node: int | None = None
    node_selector: tuple[str, ...] = ()

    @property
    def gpu_share(self) -> int:
        """Accelerator thousandths over all workers."""
        return self.request.gpu_share * self.gang


@dataclass(frozen=True, slots=True)
class WorkerPlacement:
    """Where one worker runs: a node, the accelerator indexes on it, and the share of each."""

    node: str
    gpus: tuple[int, ...] = ()
    gpu_milli: int = WHOLE


@dataclass(frozen=True, slots=True)
class Running:
    """A placed workload. ``gpu_type`` is the type it got; ``draining_until`` is set once it
    has been told to stop (its grace period ends then) and it still holds its resources."""

    workload: Workload
    workers: tuple[WorkerPlacement, ...]
    started_at: float
    gpu_type: str | None = None
    draining_until: float | None = None

    def attained(self, clock: float) -> float:
        """Accelerator-seconds received so far, this run included."""
        run_s = max(0.0, clock - self.started_at)
        return self.workload.attained_service + run_s * self.workload.gpu_share / WHOLE


@dataclass(frozen=True, slots=True)
class Claim:
    """Room that a preemption freed, held for the workload it was made for.

    ``decide`` returns the claims it made or kept (:attr:`Decisions.claims`) and the caller
    hands them back in the next snapshot. ``victims`` are the running workloads the claimant
    waits for (told to stop at ``since``); ``nodes`` are where it will start, on
    ``gpu_type``. While a victim is still leaving, nothing else may use those nodes; once
    they are all gone the claimant is placed before any other work, or the claim is
    abandoned with a reason.
    """

    workload_id: str
    victims: tuple[str, ...]
    nodes: tuple[str, ...]
    gpu_type: str | None
    since: float


@dataclass(frozen=True, slots=True)
class Quota:
    """A project's guaranteed accelerators of one type, and how many more it may borrow.

    ``borrow_limit`` None lets the project borrow any idle capacity.
    """

    project: str
    accelerator_type: str
    guaranteed: int
    borrow_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A daily window on the clock, ``start_s``..``end_s`` seconds after midnight (may wrap)."""

    start_s: float
    end_s: float

    def contains(self, clock: float) -> bool:
        t = clock % 86400.0
        if self.start_s <= self.end_s:
            return self.start_s <= t < self.end_s
        return t >= self.start_s or t < self.end_s

    def opens_in(self, clock: float) -> float:
        """Seconds until the window next opens (0 if open now)."""
        if self.contains(clock):
            return 0.0
        return (self.start_s - clock % 86400.0) % 86400.0


Order = Literal["fifo", "las", "fair"]
HeadMode = Literal["strict", "backfill", "skip"]
Packing = Literal["first-fit", "fragmentation"]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Which rules the policy applies and their parameters; see :mod:`.policies` for the names.

    - ``order``: ``fifo`` (submit time), ``las`` (least attained service first) or ``fair``
      (projects by dominant resource share; inside a project, priority class then attained
      service level then submit time).
    - ``head``: ``strict`` (nothing passes a blocked head), ``backfill`` (the blocked head gets
      a reservation of nodes; later work may only use other nodes) or ``skip`` (any later
      work that fits is placed).
    - ``packing``: ``first-fit`` (lowest node index) or ``fragmentation`` (FGD-style least
      growth of expected fragmentation; fractional work onto already shared GPUs).
    - ``quotas``: enforce guaranteed quotas and borrowing; ``reclaim`` preempts borrowed work
      when its owner claims the quota back; ``priority_preemption`` lets a higher class preempt
      a lower class of the same project.
    - ``service_levels``: attained-service thresholds (accelerator-seconds) of Tiresias-style
      discretised LAS; ``las_preemption`` lets work at a lower level preempt work at a higher
      level (``las_scope``: inside the project, or across the cluster); ``las_borrowed`` also
      lets it preempt, inside a project scope, work that other projects run above their
      guarantee (at most what each borrows).
    - ``guarantee_start``: a preemptible workload counts as within its project's guarantee
      while the project uses less than the guarantee (and its borrow limit allows the rest);
      the part above the guarantee is borrowed. Off, it must fit wholly within it.
    - ``grace_s``: how long a preempted workload may run before it must have released its
      resources; ``min_runtime_s``: LAS and priority victims must have run at least this long.
    - ``energy_aware``: prefer the accelerator type with the lowest power draw;
      ``low_carbon_windows`` hold deferrable work until a window opens or ``max_defer_s``
      after its submission.
    """

    name: str = "default"
    order: Order = "fair"
    head: HeadMode = "backfill"
    packing: Packing = "fragmentation"
    quotas: bool = True
    reclaim: bool = True
    priority_preemption: bool = True
    service_levels: tuple[float, ...] = ()
    las_preemption: bool = False
    las_scope: Literal["project", "cluster"] = "project"
    grace_s: float = 30.0
    min_runtime_s: float = 0.0
    reservations: int = 1
    las_borrowed: bool = False
    guarantee_start: bool = False
    energy_aware: bool = False
    low_carbon_windows: tuple[Window, ...] = ()
    max_defer_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class Demand:
    """How often workers asking for ``request`` have been seen (the typical workload mix)."""

    request: Request
    count: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scheduling decision depends on.

    ``demand`` is the workload mix that fragmentation-aware packing keeps room for, e.g. the
    worker requests submitted over the last day; empty, it is taken from the pending and
    running workloads of the snapshot.
    """

    clock: float
    nodes: tuple[Node, ...]
    running: tuple[Running, ...] = ()
    pending: tuple[Workload, ...] = ()
    quotas: tuple[Quota, ...] = ()
    config: PolicyConfig = field(default_factory=PolicyConfig)
    demand: tuple[Demand, ...] = ()
    claims: tuple[Claim, ...] = ()

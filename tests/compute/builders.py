"""Small builders for scheduler snapshots, shared by the compute tests."""

from __future__ import annotations

from collections.abc import Iterable

from underlay.compute.scheduler import (
    Accelerator,
    Decisions,
    Node,
    PolicyConfig,
    PowerModel,
    Quota,
    Request,
    Running,
    Snapshot,
    WorkerPlacement,
    Workload,
    policy_config,
)

A100_POWER = PowerModel(idle_watts=50.0, busy_watts=400.0)


def node(
    name: str,
    gpus: int = 8,
    gpu_type: str = "A100",
    cpu: int = 64,
    mem_gib: int = 512,
    free: Iterable[int] | None = None,
    healthy: bool = True,
    unhealthy_gpus: Iterable[int] = (),
    power: PowerModel | None = A100_POWER,
) -> Node:
    frees = list(free) if free is not None else [1000] * gpus
    bad = set(unhealthy_gpus)
    accs = tuple(
        Accelerator(gpu_type, 80 * 1024, frees[i], i not in bad, power) for i in range(gpus)
    )
    n = Node.idle(name, cpu * 1000, mem_gib * 1024, accs)
    return Node(
        n.name, n.cpu_milli, n.memory_mib, n.free_cpu_milli, n.free_memory_mib, accs, healthy
    )


def job(
    wid: str,
    project: str = "vision",
    gpus: int = 0,
    milli: int = 0,
    gpu_type: str | None = None,
    gang: int = 1,
    priority: int = 0,
    submit: float = 0.0,
    attained: float = 0.0,
    deferrable: bool = False,
    cpu: int = 0,
    mem: int = 0,
) -> Workload:
    return Workload(
        wid,
        project,
        Request(cpu, mem, gpus, milli, gpu_type),
        gang=gang,
        priority=priority,
        deferrable=deferrable,
        submit_time=submit,
        attained_service=attained,
    )


def running_on(
    workload: Workload,
    placements: list[tuple[str, tuple[int, ...]]],
    started: float = 0.0,
    gpu_type: str | None = "A100",
    draining_until: float | None = None,
) -> Running:
    milli = 1000 if workload.request.gpus else workload.request.gpu_milli
    workers = tuple(WorkerPlacement(n, g, milli) for n, g in placements)
    return Running(workload, workers, started, gpu_type, draining_until)


def occupy(nodes: list[Node], runs: Iterable[Running]) -> tuple[Node, ...]:
    """The nodes with the running workloads' shares, CPUs and memory taken off."""
    by_name = {n.name: n for n in nodes}
    for r in runs:
        req = r.workload.request
        for w in r.workers:
            n = by_name[w.node]
            accs = list(n.accelerators)
            for g in w.gpus:
                a = accs[g]
                accs[g] = Accelerator(
                    a.type, a.memory_mib, a.free_milli - w.gpu_milli, a.healthy, a.power
                )
            by_name[w.node] = Node(
                n.name,
                n.cpu_milli,
                n.memory_mib,
                n.free_cpu_milli - req.cpu_milli,
                n.free_memory_mib - req.memory_mib,
                tuple(accs),
                n.healthy,
            )
    return tuple(by_name[n.name] for n in nodes)


def snapshot(
    nodes: Iterable[Node],
    pending: Iterable[Workload] = (),
    running: Iterable[Running] = (),
    quotas: Iterable[Quota] = (),
    config: PolicyConfig | str = "default",
    clock: float = 0.0,
) -> Snapshot:
    cfg = policy_config(config) if isinstance(config, str) else config
    return Snapshot(clock, tuple(nodes), tuple(running), tuple(pending), tuple(quotas), cfg)


def placed(d: Decisions) -> dict[str, list[tuple[str, tuple[int, ...], int]]]:
    return {p.workload_id: [(w.node, w.gpus, w.gpu_milli) for w in p.workers] for p in d.places}


def waiting(d: Decisions) -> dict[str, str]:
    return {w.workload_id: w.reason for w in d.waits}


def rejected(d: Decisions) -> dict[str, str]:
    return {r.workload_id: r.reason for r in d.rejects}

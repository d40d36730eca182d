"""The reject rule: requests that no node of this cluster could ever satisfy.

A request is checked against the cluster's total hardware (healthy or not, used or not): if
it could not run even on an empty cluster, it is rejected with what to change, instead of
waiting forever. Capacity that exists but is busy or unhealthy is a reason to wait, not to
reject. Malformed requests (negative amounts, a fraction above one GPU, both whole GPUs and a
fraction) are rejected the same way, so one bad row never stalls the live loop.
"""

from __future__ import annotations

from underlay.compute.scheduler.cluster import ClusterState
from underlay.compute.scheduler.quota import gpus_text
from underlay.compute.scheduler.snapshot import WHOLE, Request, Workload


def never_fits(state: ClusterState, workload: Workload) -> str | None:
    """Why ``workload`` can never run on this cluster, or None if it could."""
    req = workload.request
    malformed = _malformed(req, workload.gang)
    if malformed is not None:
        return malformed
    if req.gpu_type is not None and req.gpu_type not in state.type_total:
        known = ", ".join(state.types) or "none"
        return f"no node has accelerator type {req.gpu_type!r} (this cluster has: {known})"
    if req.gpu_share and not state.types:
        return "asks for accelerators but no node of this cluster has any"
    if req.cpu_milli > state.max_cpu:
        return (
            f"needs {req.cpu_milli / 1000:g} CPUs per worker; the largest node has "
            f"{state.max_cpu / 1000:g}"
        )
    if req.memory_mib > state.max_mem:
        largest = state.max_mem
        return f"needs {req.memory_mib} MiB memory per worker; the largest node has {largest} MiB"
    types = [req.gpu_type] if req.gpu_type else state.types
    if req.gpus:
        most = max(state.type_max_per_node[t] for t in types)
        if req.gpus > most:
            which = req.gpu_type or "accelerators of one type"
            return (
                f"needs {req.gpus} GPUs per worker; the largest node has {most} {which} "
                f"(split the job into a gang of smaller workers)"
            )
    room = max(_hosts(state, req, t) for t in types) if req.gpu_share else _hosts(state, req, None)
    if room == 0:
        return "no single node has the CPUs, memory and accelerators one worker needs together"
    if workload.gang > room:
        total = workload.gang * req.gpu_share
        return (
            f"gang of {workload.gang} workers needs {gpus_text(total)} GPUs at once; "
            f"the whole cluster could host only {room} such workers"
        )
    return None


def _malformed(req: Request, gang: int) -> str | None:
    if gang < 1:
        return f"gang size must be at least 1 (got {gang})"
    for name, value in (
        ("cpu_milli", req.cpu_milli),
        ("memory_mib", req.memory_mib),
        ("gpus", req.gpus),
        ("gpu_milli", req.gpu_milli),
    ):
        if value < 0:
            return f"{name} must not be negative (got {value})"
    if req.gpus and req.gpu_milli:
        return (
            f"asks for {req.gpus} whole GPUs and {req.gpu_milli} thousandths of one; "
            "ask for either whole GPUs or a fraction of one"
        )
    if req.gpu_milli > WHOLE:
        return (
            f"asks for {req.gpu_milli / WHOLE:g} of one GPU; a fraction cannot exceed 1, "
            f"ask for whole GPUs instead"
        )
    return None


def _hosts(state: ClusterState, req: Request, gpu_type: str | None) -> int:
    """How many workers of ``req`` an empty cluster could host on ``gpu_type``."""
    unbounded = 1 << 30
    total = 0
    for cls in state.host_classes():
        fit = unbounded
        if req.cpu_milli:
            fit = cls.cpu_milli // req.cpu_milli
        if req.memory_mib:
            fit = min(fit, cls.memory_mib // req.memory_mib)
        if gpu_type is not None:
            count = cls.accelerators.get(gpu_type, 0)
            per_gpu = WHOLE // max(1, req.gpu_milli)
            fit = min(fit, count // req.gpus if req.gpus else count * per_gpu)
        total = min(unbounded, total + fit * cls.count)
    return total

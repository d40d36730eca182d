"""Quotas and fair share: who is entitled to what, and who has had the least so far.

:class:`QuotaLedger` tracks, per project and accelerator type, the guaranteed amount, what
the project uses now and how much more it may borrow. A placement is *guaranteed* while the
project stays within its quota and *borrowed* above it; borrowed work runs only on capacity
that is idle after every guaranteed claim of the round was served, and is the first to be
preempted when the owner of that capacity claims it back.

:class:`FairShare` orders projects by dominant resource share (DRF, Ghodsi et al. NSDI '11):
a project's share of a resource is what it holds over the cluster's capacity of it, and its
dominant share is the largest of those. The project with the smallest dominant share goes
next. Resources are each accelerator type, CPUs and memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from underlay.compute.scheduler.snapshot import WHOLE, Quota, Running, Workload

RunKey = tuple[str, str | None, int, int, int, int, int, float | None]
"""What the ledger, fair share and the workload mix read of a running workload: (project,
accelerator type, whole GPUs, thousandths, CPU thousandths, memory MiB, gang,
``draining_until``)."""


def running_counts(running: Iterable[Running]) -> dict[RunKey, int]:
    """Running work counted by :data:`RunKey`, in one pass: a round's set-up then loops over
    a few hundred distinct keys instead of thousands of running workloads, once for each of
    the ledger, fair share and the workload mix. Every sum taken over the counts is a sum of
    integers, so it is exactly the per-workload sum; keys come in the order of their first
    workload. (A plain loop: ``Counter(map(attrgetter(...)))`` with dotted names is slower.)"""
    counts: dict[RunKey, int] = {}
    for r in running:
        w = r.workload
        q = w.request
        key = (
            w.project,
            r.gpu_type,
            q.gpus,
            q.gpu_milli,
            q.cpu_milli,
            q.memory_mib,
            w.gang,
            r.draining_until,
        )
        counts[key] = counts.get(key, 0) + 1
    return counts


def gpus_text(milli: int) -> str:
    """Thousandths of accelerators as a person writes them: ``8``, ``2.5``."""
    return f"{milli // WHOLE}" if milli % WHOLE == 0 else f"{milli / WHOLE:g}"


class QuotaLedger:
    """Guaranteed, used and borrowable accelerator thousandths per (project, type)."""

    def __init__(self, quotas: tuple[Quota, ...], running: Mapping[RunKey, int]) -> None:
        """``running``: the running work as :func:`running_counts` counts it."""
        self.guaranteed: dict[tuple[str, str], int] = {}
        self.limit: dict[tuple[str, str], int | None] = {}
        for q in quotas:
            key = (q.project, q.accelerator_type)
            self.guaranteed[key] = self.guaranteed.get(key, 0) + max(0, q.guaranteed) * WHOLE
            self.limit[key] = None if q.borrow_limit is None else max(0, q.borrow_limit) * WHOLE
        self.used: dict[tuple[str, str], int] = {}
        self.draining: dict[tuple[str, str], int] = {}
        used, draining = self.used, self.draining
        for (project, t, gpus, milli, _, _, gang, until), n in running.items():
            if t is None:
                continue
            key = (project, t)
            share = (gpus * WHOLE if gpus else milli) * gang * n
            used[key] = used.get(key, 0) + share
            if until is not None:
                draining[key] = draining.get(key, 0) + share

    def within(self, project: str, gpu_type: str, amount: int) -> bool:
        key = (project, gpu_type)
        return self.used.get(key, 0) + amount <= self.guaranteed.get(key, 0)

    def may_borrow(self, project: str, gpu_type: str, amount: int) -> bool:
        key = (project, gpu_type)
        limit = self.limit.get(key)
        if limit is None:
            return True
        return self.used.get(key, 0) + amount <= self.guaranteed.get(key, 0) + limit

    def borrowed(self, project: str, gpu_type: str) -> int:
        """What the project holds above its guarantee, not counting work already leaving."""
        key = (project, gpu_type)
        held = self.used.get(key, 0) - self.draining.get(key, 0)
        return max(0, held - self.guaranteed.get(key, 0))

    def describe(self, project: str, gpu_type: str) -> str:
        """ "project vision uses 8 of its 8 guaranteed A100" and the borrow limit if any."""
        key = (project, gpu_type)
        used = gpus_text(self.used.get(key, 0))
        text = f"project {project} uses {used} of its {gpus_text(self.guaranteed.get(key, 0))}"
        text += f" guaranteed {gpu_type}"
        limit = self.limit.get(key)
        if limit is not None:
            text += f" (may borrow {gpus_text(limit)} more)"
        return text


class FairShare:
    """Dominant resource share per project, updated as the round places work."""

    def __init__(
        self,
        gpu_capacity: dict[str, int],
        cpu_capacity: int,
        mem_capacity: int,
        running: Mapping[RunKey, int],
    ) -> None:
        """``running``: the running work as :func:`running_counts` counts it."""
        # CPU and memory are kept as two numbers and accelerators per type, so charging a
        # placement builds no keys; it runs once per placement of the round.
        self._cap: dict[str, float] = {t: float(c * WHOLE) for t, c in gpu_capacity.items()}
        self._cpu = float(cpu_capacity)
        self._mem = float(mem_capacity)
        self._usage: dict[str, list[float]] = {}
        self._gpus: dict[str, dict[str, float]] = {}
        self._dominant: dict[str, float] = {}
        self.charges = 0
        """Placements charged so far: a share can only have moved if this did."""
        for (project, t, gpus, milli, cpu, mem, gang, _), n in running.items():
            usage = self._usage.get(project)
            if usage is None:
                usage = self._usage[project] = [0.0, 0.0]
                self._gpus[project] = {}
            # Integers, exactly as many times as there are such workloads: the same floats
            # as adding them one workload at a time.
            usage[0] += cpu * gang * n
            usage[1] += mem * gang * n
            if t is not None:
                per = self._gpus[project]
                per[t] = per.get(t, 0.0) + (gpus * WHOLE if gpus else milli) * gang * n
        for project in self._usage:
            self._update(project)

    def _add(self, workload: Workload, gpu_type: str | None) -> None:
        usage = self._usage.get(workload.project)
        if usage is None:
            usage = self._usage[workload.project] = [0.0, 0.0]
            self._gpus[workload.project] = {}
        req = workload.request
        gang = workload.gang
        usage[0] += req.cpu_milli * gang
        usage[1] += req.memory_mib * gang
        if gpu_type is not None:
            gpus = self._gpus[workload.project]
            gpus[gpu_type] = gpus.get(gpu_type, 0.0) + req.gpu_share * gang

    def _update(self, project: str) -> None:
        cpu, mem = self._usage[project]
        dominant = max(cpu / self._cpu if self._cpu else 0.0, mem / self._mem if self._mem else 0.0)
        cap = self._cap
        for t, amount in self._gpus[project].items():
            c = cap.get(t)
            if c and amount / c > dominant:
                dominant = amount / c
        self._dominant[project] = dominant

    def charge(self, workload: Workload, gpu_type: str | None) -> None:
        """Count a placement of ``workload`` (on ``gpu_type``) toward its project's share."""
        project = workload.project
        usage = self._usage.get(project)
        req = workload.request
        if (
            usage is None
            or min(req.cpu_milli, req.memory_mib, req.gpus, req.gpu_milli, workload.gang) < 0
        ):
            self._add(workload, gpu_type)
            self._update(project)
        else:  # _add and _update, for what this placement changed only
            # Usage only grows here, so the dominant share is the larger of the old one and
            # the shares this placement raised: the same float as _update works out.
            gang = workload.gang
            cpu = usage[0] = usage[0] + req.cpu_milli * gang
            mem = usage[1] = usage[1] + req.memory_mib * gang
            dominant = self._dominant[project]
            if self._cpu and cpu / self._cpu > dominant:
                dominant = cpu / self._cpu
            if self._mem and mem / self._mem > dominant:
                dominant = mem / self._mem
            if gpu_type is not None:
                gpus = self._gpus[project]
                share = req.gpus * WHOLE if req.gpus else req.gpu_milli
                amount = gpus[gpu_type] = gpus.get(gpu_type, 0.0) + share * gang
                c = self._cap.get(gpu_type)
                if c and amount / c > dominant:
                    dominant = amount / c
            self._dominant[project] = dominant
        self.charges += 1

    def share(self, project: str) -> float:
        return self._dominant.get(project, 0.0)

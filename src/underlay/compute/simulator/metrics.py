"""What a replay reports, and how each figure is defined.

- **JCT** (job completion time): finish minus submit, over jobs that finished; average,
  median and 95th percentile (linear interpolation between ranks).
- **queueing delay**: first start minus submit, over jobs that started.
- **makespan**: from the first arrival to the last event of the replay.
- **GPU utilisation**: allocated accelerator-time over capacity times makespan.
- **fragmentation**: the time-average fraction of all accelerators that were free but on a
  node where not one waiting workload's worker fitted (zero while nothing waits).
- **unallocated GPUs**: accelerators still free after the round that followed the last
  arrival (for a hold-until-the-end replay such as openb, FGD's unallocated GPUs).
- **Jain's fairness** across projects of each project's mean *service ratio*
  (run time / JCT of its finished jobs: 1 means never waited). 1.0 is perfectly even.
- **energy**: every accelerator draws its idle power for the whole makespan plus
  (busy - idle) times its allocated share while allocated.
- **offered load**: the accelerator-time the trace asks for (shares times durations) over
  the capacity times the span of its arrivals; per week, the accelerator-time of the jobs
  that arrive in each 7-day week from the first arrival over the capacity times 7 days (the
  last week is counted as a whole week though it may be partial). Jobs without a duration
  (they run to the end) are left out; without any duration, or with all arrivals at one
  instant, the total is undefined.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from underlay.compute.scheduler.snapshot import WHOLE
from underlay.compute.simulator.trace import SkippedRow, TraceJob

WEEK_S = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class Report:
    trace: str
    cluster: str
    policy: str
    seed: int
    jobs: int
    finished: int
    rejected: int
    unfinished: int
    avg_jct_s: float | None
    median_jct_s: float | None
    p95_jct_s: float | None
    avg_queue_s: float | None
    makespan_s: float
    gpu_utilization: float
    fragmentation: float
    unallocated_gpus: float
    jain_fairness: float | None
    preemptions: int
    energy_kwh: float
    gpus: int
    skipped_rows: int
    decide_calls: int
    decide_ms_avg: float
    wall_s: float
    skipped: tuple[SkippedRow, ...] = ()
    """The first skipped trace rows (line and reason); ``skipped_rows`` counts them all."""
    offered_load: float | None = None
    offered_load_weekly: tuple[float, ...] = ()
    autoscale: dict[str, Any] | None = None
    """With autoscaling: cost, node-hours, spot losses, ... (see :mod:`.autoscaling`)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.autoscale is None:
            del out["autoscale"]  # the report without autoscaling is as it always was
        return out


def offered_load(jobs: tuple[TraceJob, ...], gpus: int) -> tuple[float | None, tuple[float, ...]]:
    """The offered load of ``jobs`` on ``gpus`` accelerators: in total and per week."""
    timed = [j for j in jobs if j.duration_s is not None]
    if not timed or gpus <= 0:
        return None, ()
    first = min(j.workload.submit_time for j in jobs)
    span = max(j.workload.submit_time for j in jobs) - first
    weekly: dict[int, float] = {}
    for j in timed:
        work = j.workload.gpu_share * (j.duration_s or 0.0) / WHOLE
        week = int((j.workload.submit_time - first) // WEEK_S)
        weekly[week] = weekly.get(week, 0.0) + work
    total = sum(weekly.values())
    weeks = tuple(weekly.get(w, 0.0) / (gpus * WEEK_S) for w in range(max(weekly) + 1))
    return (total / (gpus * span) if span > 0 else None), weeks


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, linear between ranks."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def jain(values: list[float]) -> float | None:
    """Jain's fairness index of positive values: (sum x)^2 / (n * sum x^2)."""
    if not values:
        return None
    squares = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * squares) if squares else None


class Collector:
    """Per-job outcomes, folded into a :class:`Report` at the end."""

    def __init__(self) -> None:
        self.jct: list[float] = []
        self.queue: list[float] = []
        self.ratios: dict[str, list[float]] = {}

    def started(self, submit: float, first_start: float) -> None:
        self.queue.append(first_start - submit)

    def finished(self, project: str, submit: float, finish: float, run_s: float) -> None:
        jct = finish - submit
        self.jct.append(jct)
        self.ratios.setdefault(project, []).append(run_s / jct if jct > 0 else 1.0)

    def summary(self) -> dict[str, float | None]:
        ordered = sorted(self.jct)
        per_project = [sum(v) / len(v) for v in self.ratios.values() if v]
        return {
            "avg_jct_s": sum(ordered) / len(ordered) if ordered else None,
            "median_jct_s": percentile(ordered, 0.5) if ordered else None,
            "p95_jct_s": percentile(ordered, 0.95) if ordered else None,
            "avg_queue_s": sum(self.queue) / len(self.queue) if self.queue else None,
            "jain_fairness": jain(per_project),
        }

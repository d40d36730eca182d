"""The fleet over time, for the overview's charts: utilisation, power, temperature and queue
depth, sampled every ``ui.sample_interval_s`` by a thread of the server while it runs.

Nothing else keeps this history (nodes report their current figures only), and the charts
need a day of it at most, so it lives in memory: a bounded ring of samples per process
(24 h at the interval; a restarted server starts a new history).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select

from underlay.compute.models import AcceleratorRow, Job, NodeRow
from underlay.compute.states import JobState
from underlay.store import Database, Scope

log = logging.getLogger("underlay.ui")
KEEP_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # Unix seconds
    utilization: float | None  # mean over accelerators, 0..1 (None: no accelerator)
    cpu_utilization: float | None  # mean over nodes, 0..1
    power_watts: float | None  # summed over accelerators that report it
    temperature_c: float | None  # hottest accelerator
    queued: int
    running: int


def take_sample(db: Database, now: float | None = None) -> Sample:
    """The fleet now: a handful of aggregate queries over nodes, accelerators and jobs."""
    with db.session(Scope.everything()) as session:
        util, power, temp = session.execute(
            select(
                func.avg(AcceleratorRow.utilization),
                func.sum(AcceleratorRow.power_watts),
                func.max(AcceleratorRow.temperature_c),
            )
        ).one()
        cpu = session.scalar(select(func.avg(NodeRow.cpu_utilization)))
        counts = dict(
            session.execute(
                select(Job.state, func.count(Job.id))
                .where(Job.state.in_([JobState.queued, JobState.running]))
                .group_by(Job.state)
            ).all()
        )
    return Sample(
        at=time.time() if now is None else now,
        utilization=None if util is None else float(util),
        cpu_utilization=None if cpu is None else float(cpu),
        power_watts=None if power is None else float(power),
        temperature_c=None if temp is None else float(temp),
        queued=int(counts.get(JobState.queued, 0)),
        running=int(counts.get(JobState.running, 0)),
    )


class FleetHistory:
    """A ring of :class:`Sample` and the thread that fills it."""

    def __init__(self, db: Database, interval_s: float) -> None:
        self.db = db
        self.interval_s = interval_s
        self._samples: collections.deque[Sample] = collections.deque(
            maxlen=max(2, int(KEEP_S / interval_s))
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def samples(self, since_s: float = KEEP_S) -> list[Sample]:
        cutoff = time.time() - since_s
        with self._lock:
            return [s for s in self._samples if s.at >= cutoff]

    def record(self) -> None:
        sample = take_sample(self.db)
        with self._lock:
            self._samples.append(sample)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.record()
            except Exception:  # a busy or restarting database: the next round tries again
                log.warning("fleet sample failed", exc_info=True)
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ui-fleet-history", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

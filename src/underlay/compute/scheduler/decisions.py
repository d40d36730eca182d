"""What the scheduling policy answers: place, preempt, wait (with a reason) or reject.

Every pending workload of the snapshot gets exactly one of :class:`Place`, :class:`Wait` or
:class:`Reject`; running workloads may get a :class:`Preempt`. Reasons are written for a
person ("project vision uses 8 of its 8 guaranteed A100; no idle A100 to borrow"), because a
job that waits without an explanation is the most common complaint about cluster schedulers.
"""

from __future__ import annotations

from dataclasses import dataclass

from underlay.compute.scheduler.snapshot import Claim, WorkerPlacement


@dataclass(frozen=True, slots=True)
class Place:
    """Start ``workload_id`` with these workers; ``borrowed`` if it runs on another project's
    idle guarantee (and may be preempted when the owner claims it back)."""

    workload_id: str
    workers: tuple[WorkerPlacement, ...]
    gpu_type: str | None = None
    borrowed: bool = False


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop running ``workload_id`` within ``grace_s`` seconds, for ``for_workload``."""

    workload_id: str
    reason: str
    grace_s: float
    for_workload: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Keep ``workload_id`` pending, and say why."""

    workload_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """``workload_id`` can never run on this cluster as asked; ``reason`` says what to change."""

    workload_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Abandon:
    """The preemption claim of ``workload_id`` is given up (its victims may have left in vain);
    ``reason`` says why. Recorded so that no preemption goes unaccounted for."""

    workload_id: str
    victims: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Decisions:
    """One decision round. ``recheck_at`` is the earliest clock at which the answer could change
    with no new event (a low-carbon window opens, a workload becomes preemptible); None if
    only an event (arrival, finish, node change) can change it. ``claims`` is the room held
    for claimants of preemptions, to pass in the next snapshot; ``abandoned`` the claims given
    up this round."""

    places: tuple[Place, ...] = ()
    preempts: tuple[Preempt, ...] = ()
    waits: tuple[Wait, ...] = ()
    rejects: tuple[Reject, ...] = ()
    recheck_at: float | None = None
    claims: tuple[Claim, ...] = ()
    abandoned: tuple[Abandon, ...] = ()

    def reason(self, workload_id: str) -> str | None:
        """The wait or reject reason for one workload (None if it was placed or is unknown)."""
        for wait in self.waits:
            if wait.workload_id == workload_id:
                return wait.reason
        for reject in self.rejects:
            if reject.workload_id == workload_id:
                return reject.reason
        return None

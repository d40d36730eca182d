"""The job lifecycle: one state machine, every transition written once and checked here.

::

    queued ──► admitted ──► running ──► succeeded
      │           │            ├──────► failed ────┐
      │           │            ├──────► cancelled  │ retry (retries left)
      │           │            ├──────► preempted ─┤ always requeued
      │           │            └──────► lost ──────┤ retry (retries left)
      │           └─► queued (launch failed)       │
      └─► cancelled / failed (rejected)   queued ◄─┘

``admitted`` means the policy placed the job and its resources are reserved; ``running`` means
a process exists. Preemption never uses up a retry; failure and loss do.
"""

from __future__ import annotations

from enum import StrEnum

from underlay.errors import Conflict


class JobState(StrEnum):
    queued = "queued"
    admitted = "admitted"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    preempted = "preempted"
    lost = "lost"


S = JobState
ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.queued: frozenset({S.admitted, S.cancelled, S.failed}),
    S.admitted: frozenset({S.running, S.queued, S.cancelled, S.failed, S.lost}),
    S.running: frozenset({S.succeeded, S.failed, S.cancelled, S.preempted, S.lost}),
    S.preempted: frozenset({S.queued}),
    S.failed: frozenset({S.queued}),
    S.lost: frozenset({S.queued}),
    S.succeeded: frozenset(),
    S.cancelled: frozenset(),
}

ACTIVE = frozenset({S.admitted, S.running})
"""States in which a job holds resources."""

ENDED = frozenset({S.succeeded, S.failed, S.cancelled, S.preempted, S.lost})
"""States that end an attempt."""


def check_transition(job_id: int, current: str, new: JobState) -> JobState:
    """``new`` if a job may move there from ``current``, else Conflict saying why not."""
    state = JobState(current)
    if new not in ALLOWED[state]:
        raise Conflict(f"job {job_id} is {state}; it cannot become {new}")
    return new


def is_final(state: str, attempts: int, max_retries: int) -> bool:
    """Whether a job in ``state`` after ``attempts`` attempts will never run again."""
    s = JobState(state)
    if s in (S.succeeded, S.cancelled):
        return True
    if s in (S.failed, S.lost):
        return attempts > max_retries
    return False

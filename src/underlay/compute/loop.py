"""The live scheduling loop: snapshot the store, call the policy, apply, repeat.

One loop runs per deployment: every server process may start one, and the one that holds the
leader lock (a PostgreSQL advisory lock on a dedicated connection, or a file lock beside the
SQLite database) works while the others wait to take over. A round reads its snapshot in a
read-only transaction (no write lock held while a thousand nodes and ten thousand jobs are
read and judged), then writes its decisions in one short write transaction that re-checks
what each depended on (:mod:`underlay.compute.snapshots`), so a crash mid-apply neither loses
nor doubles a placement, and a cancel or a lost node between the two is never overridden.
A round whose decisions change nothing (every job waits for the reason it already has) takes
no write lock at all.

The room that a preemption frees is held for its claimant across rounds (the policy's
:class:`~underlay.compute.scheduler.Claim`); the leader keeps those claims in memory, so a new
leader starts with none and a claimant whose victims already left simply competes again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from underlay.audit import AuditLog
from underlay.compute.nodes import any_silent_nodes, mark_lost_nodes
from underlay.compute.scheduler import Claim, Node, decide, policy_config
from underlay.compute.snapshots import Applied, apply_decisions, build_snapshot, has_writes
from underlay.config import Settings
from underlay.store import Database, Scope
from underlay.store.types import utcnow

if TYPE_CHECKING:
    from underlay.compute.autoscaler.runtime import Autoscaler

log = logging.getLogger(__name__)
_LEADER_LOCK_ID = 0x756E6C70  # "unlp"


def run_round(
    db: Database,
    audit: AuditLog,
    settings: Settings,
    leader_since: dt.datetime | None = None,
    claims: list[Claim] | None = None,
    extra_nodes: tuple[Node, ...] = (),
) -> int:
    """One scheduling round; returns how many jobs it admitted.

    Nodes are judged lost only once this loop has led for ``node_lost_after_s`` itself: after
    a server outage, heartbeats were missing because the server was down, not the nodes.
    ``claims`` carries the preemption claims from one round to the next: it is read into the
    snapshot and, once the round is written, replaced by the claims the policy keeps.
    ``extra_nodes`` join the snapshot: the autoscaler's groups' room to grow, as nodes that
    are not up, so work only they could host waits for them instead of being refused.
    """
    config = policy_config(settings.compute.policy)
    lost_after = settings.compute.node_lost_after_s
    now = utcnow()
    if leader_since is None or (now - leader_since).total_seconds() >= lost_after:
        with db.read_session(Scope.everything()) as session:
            silent = any_silent_nodes(session, lost_after)
        if silent:
            with db.session(Scope.everything()) as session:
                mark_lost_nodes(session, audit, lost_after, settings)
    with db.read_session(Scope.everything()) as session:
        snapshot, index = build_snapshot(session, config, now)
    if extra_nodes:
        snapshot = replace(snapshot, nodes=(*snapshot.nodes, *extra_nodes))
    if not snapshot.pending and not snapshot.running:
        if claims:
            claims.clear()
        return 0
    if not snapshot.nodes:
        return 0  # no node registered yet (the local agent is starting): judge nothing
    if claims:
        snapshot = replace(snapshot, claims=tuple(claims))
    decisions = decide(snapshot)
    applied = Applied()
    if has_writes(decisions, index):
        with db.session(Scope.everything()) as session:
            applied = apply_decisions(session, audit, decisions, index, now)
    for refused in applied.refused:
        log.info("scheduling round: %s", refused)
    if applied.redo:
        return 0  # nothing was written: the claims stay as they were
    for gone in decisions.abandoned:
        log.info("preemption claim of job %s abandoned: %s", gone.workload_id, gone.reason)
    if claims is not None:
        claims[:] = decisions.claims
    return applied.admitted


@dataclass
class RoundTimes:
    """How long this process's rounds took (only the leader runs rounds), for ``/metrics``."""

    count: int = 0
    total_s: float = 0.0
    last_s: float | None = None

    def observe(self, seconds: float) -> None:
        self.count, self.total_s, self.last_s = self.count + 1, self.total_s + seconds, seconds


class SchedulerLoop:
    """A daemon thread running :func:`run_round` while it holds the leader lock, and, when
    node groups are configured, an autoscaler step after the rounds (see
    :mod:`underlay.compute.autoscaler.runtime`); ``server_url`` is where its nodes report."""

    def __init__(
        self, db: Database, audit: AuditLog, settings: Settings, server_url: str = ""
    ) -> None:
        self.db, self.audit, self.settings = db, audit, settings
        self.server_url = server_url
        self.autoscaler: Autoscaler | None = None
        self.rounds = RoundTimes()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="underlay-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Run a round now (a job was submitted or ended) instead of at the next tick."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        if self.autoscaler is not None:
            self.autoscaler.close()  # local instances end with their server

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._leadership():
                    log.info("scheduler loop is the leader")
                    self._lead()
            except Exception:  # keep scheduling whatever one round hit; it is logged
                log.exception("scheduler loop failed; retrying")
                self._stop.wait(1.0)

    def _lead(self) -> None:
        interval = self.settings.compute.loop_interval_s
        leader_since = utcnow()
        claims: list[Claim] = []
        if self.settings.compute.autoscaler.groups and self.autoscaler is None:
            from underlay.compute.autoscaler.runtime import Autoscaler

            try:
                self.autoscaler = Autoscaler(self.db, self.audit, self.settings, self.server_url)
            except Exception:  # a misconfigured group must not stop the scheduling
                log.exception("the autoscaler could not start; scheduling goes on without it")
        while not self._stop.is_set():
            started = time.perf_counter()
            scaler = self.autoscaler
            extra = scaler.headroom() if scaler is not None else ()
            try:
                admitted = run_round(
                    self.db, self.audit, self.settings, leader_since, claims, extra
                )
            except Exception:
                log.exception("scheduling round failed")
                admitted = 0
            if scaler is not None:
                try:
                    scaler.step()
                except Exception:
                    log.exception("autoscaling step failed")
            took = time.perf_counter() - started
            self.rounds.observe(took)
            if not admitted:
                self._wake.wait(interval)
            # wakes that arrive together share one round: a burst of submissions must not
            # run a round (and hold the database's write lock) per submission. A round is one
            # write transaction, so rounds back to back would leave submissions, heartbeats
            # and cancels only the gaps between them: pause at least as long as the round took
            self._stop.wait(max(min(interval, 0.05), took))
            self._wake.clear()

    @contextlib.contextmanager
    def _leadership(self) -> Iterator[None]:
        if self.db.dialect == "postgresql":
            with self.db.engine.connect() as conn:
                while not conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": _LEADER_LOCK_ID}
                ).scalar():
                    conn.rollback()
                    if self._stop.wait(2.0):
                        break  # _lead sees the stop and returns at once
                conn.commit()
                yield
            return
        with self._file_lock(self.settings.home / ".scheduler.lock"):
            yield

    @contextlib.contextmanager
    def _file_lock(self, path: Path) -> Iterator[None]:
        with path.open("w") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._stop.wait(2.0):
                        yield  # _lead sees the stop and returns at once
                        return
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

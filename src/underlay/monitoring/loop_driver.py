"""The retraining loop's driver: a thread of the server that starts runs whose trigger fired
(the newest drift report over the policy's share, or performance under its floor) and
advances every unfinished run by one step per tick, each step one transaction under the run's
row lock (:mod:`underlay.monitoring.loop_steps`). A restarted server's driver resumes every
run where its last committed step left it; a step that fails ends its run ``failed`` in a
transaction of its own, with a ``retrain`` alert, and the champion keeps serving.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.errors import UnderlayError
from underlay.monitoring import loop_steps as steps
from underlay.monitoring.loop import (
    DriftSource,
    active_run,
    drift_trigger,
    newest_drift,
    performance_trigger,
    read_policy,
    start_run,
)
from underlay.monitoring.loop_models import RetrainPolicy, RetrainRun
from underlay.store import Scope
from underlay.store.models import Project
from underlay.store.types import utcnow

if TYPE_CHECKING:
    from underlay.platform import Platform

log = logging.getLogger(__name__)
INTERVAL_S = 1.0


class LoopDriver:
    """The server's thread that starts and advances retrain runs (see the module docstring)."""

    def __init__(
        self,
        platform: Platform,
        interval_s: float = INTERVAL_S,
        drift_source: DriftSource = newest_drift,
    ) -> None:
        self.platform = platform
        self.interval_s = interval_s
        self.drift_source = drift_source
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._labels_seen: dict[tuple[int, str], int] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="underlay-retrain", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug must not stop the loop for every deployment
                log.exception("retrain loop tick failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def tick(self) -> int:
        """Fire due triggers, then one step of every unfinished run; how many runs moved."""
        self._triggers()
        with self.platform.db.session(Scope.everything()) as session:
            ids = list(
                session.scalars(
                    select(RetrainRun.id)
                    .where(RetrainRun.state.not_in(steps.TERMINAL))
                    .order_by(RetrainRun.id)
                )
            )
        return sum(self._advance(run_id) for run_id in ids if not self._stop.is_set())

    def _advance(self, run_id: int) -> bool:
        try:
            with self.platform.db.session(Scope.everything()) as session:
                run = session.get(RetrainRun, run_id, with_for_update=True)
                project = None if run is None else session.get(Project, run.project_id)
                if run is None or project is None or run.state in steps.TERMINAL:
                    return False
                moved = steps.advance(session, self.platform, project, run)
            if moved:
                self.platform.wake_scheduler()
            return moved
        except steps.StepFailed as error:
            self._fail(run_id, error.message)
        except Exception as error:  # unexpected: the run fails cleanly, the loop goes on
            log.exception("retrain run %s: step failed", run_id)
            self._fail(run_id, f"internal error: {type(error).__name__}: {error}"[:500])
        return True

    def _fail(self, run_id: int, message: str) -> None:
        with self.platform.db.session(Scope.everything()) as session:
            run = session.get(RetrainRun, run_id, with_for_update=True)
            project = None if run is None else session.get(Project, run.project_id)
            if run is not None and project is not None and run.state not in steps.TERMINAL:
                steps.fail(session, self.platform, project, run, message)

    def _triggers(self) -> None:
        with self.platform.db.session(Scope.everything()) as session:
            policies = list(
                session.scalars(select(RetrainPolicy).where(RetrainPolicy.mode != "dry-run"))
            )
            keys = [(p.project_id, p.deployment) for p in policies]
        for project_id, deployment in keys:
            try:
                self._trigger_one(project_id, deployment)
            except UnderlayError as error:
                log.warning("retrain trigger of %s: %s", deployment, error.message)

    def _labels_changed(self, session: Session, project: Project, deployment: str) -> bool:
        """Whether the deployment's feedback table has a new version since this driver last
        judged its performance (so performance is not recomputed every tick)."""
        from underlay.data.tables import TableStore
        from underlay.serving.predlog import feedback_table

        name = feedback_table(deployment)
        table = TableStore(self.platform.settings).get(session, project.id, name, missing_ok=True)
        version = None if table is None else table.published_version
        key = (project.id, deployment)
        if version is None or self._labels_seen.get(key) == version:
            return False
        self._labels_seen[key] = version
        return True

    def _trigger_one(self, project_id: int, deployment: str) -> None:
        with self.platform.db.session(Scope.everything()) as session:
            project = session.get(Project, project_id)
            if project is None or active_run(session, project_id, deployment) is not None:
                return
            policy = read_policy(session, project, deployment, missing_ok=True)
            if policy is None or policy.mode == "dry-run":
                return
            last = session.scalar(
                select(RetrainRun)
                .where(RetrainRun.project_id == project_id, RetrainRun.deployment == deployment)
                .order_by(RetrainRun.id.desc())
            )
            summary = self.drift_source(session, self.platform, project, deployment)
            trigger = {**drift_trigger(policy, summary), "source": "drift"}
            if not trigger["fires"] and self._labels_changed(session, project, deployment):
                performance = performance_trigger(session, self.platform, project, policy)
                trigger, summary = {**performance, "source": "performance"}, None
            if not trigger["fires"] or not _fresh(summary, last, policy.cooldown_s):
                return
            run = start_run(session, self.platform, project, steps.LOOP_ACTOR, deployment, trigger)
            self.platform.audit.append(
                session,
                actor=steps.LOOP_ACTOR.name,
                action="retrain.triggered",
                resource=f"project:{project.name}/deployment:{deployment}/retrain:{run.id}",
                project=project.name,
                outcome="ok",
                detail={"run": run.id, "reason": trigger["reason"][:300]},
            )


def _fresh(summary: dict[str, Any] | None, last: RetrainRun | None, cooldown_s: float) -> bool:
    """A report newer than the last run (any run answers every report before it), and the
    cooldown since the last run is over."""
    if last is None:
        return True
    report = (summary or {}).get("id")
    if report is not None and steps.loads(last.trigger).get("report") == report:
        return False
    created = (summary or {}).get("created_at")
    if isinstance(created, str):
        try:
            made = dt.datetime.fromisoformat(created)
        except ValueError:
            made = None
        if made is not None and made.tzinfo is not None and made <= last.created_at:
            return False
    since = utcnow() - last.created_at
    return since >= dt.timedelta(seconds=cooldown_s)

"""What the data plane keeps per deployment across refreshes of its view: the counters
(:mod:`underlay.serving.stats`), the canary monitor (:mod:`underlay.serving.canary`), the
prediction logger (:mod:`underlay.serving.predlog`) and the verdict it has acted on.

:class:`Guards` owns them for one server process and also holds the per-token rate limiter
and the extraction detector (:mod:`underlay.serving.limits`) shared by all deployments. It
turns a canary's ``rollback`` verdict into the automatic rollback (an event and an audit
entry, off the event loop) exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from underlay.errors import RateLimited
from underlay.serving.canary import CanaryMonitor, CanaryPolicy
from underlay.serving.limits import ExtractionDetector, LimitSpec, RateLimiter, SqlBudgetStore
from underlay.serving.stats import DeploymentStats, prometheus_text

if TYPE_CHECKING:
    from underlay.data.tables import TableStore
    from underlay.platform import Platform
    from underlay.serving.dataplane import DeploymentView
    from underlay.serving.predlog import PredictionLogger

log = logging.getLogger(__name__)
VERDICT_EVERY_S = 0.1
CANARY_ACTOR = "canary-monitor"
LOG_FLUSH_S = 2.0  # a log batch is written every 2 s or 10,000 rows


@dataclass
class Guard:
    """One deployment's counters, canary monitor and prediction logger in this process."""

    project: str
    name: str
    stats: DeploymentStats = field(default_factory=DeploymentStats)
    monitor: CanaryMonitor | None = None
    monitor_key: tuple[Any, ...] | None = None
    logger: PredictionLogger | None = None
    logger_key: tuple[Any, ...] | None = None
    acted: bool = False
    verdict_at: float = 0.0


class Guards:
    def __init__(self, platform: Platform, tables: TableStore | None) -> None:
        self.platform = platform
        self.tables = tables
        self.limiter = RateLimiter(SqlBudgetStore(platform.db.engine))
        self.detector = ExtractionDetector()
        self._guards: dict[int, Guard] = {}
        # rows asked for per (project id, token key) since start: the alert worker's anomaly
        # scan reads it (query volume per token)
        self.token_rows: dict[tuple[int, str], int] = {}
        self.rate_limited: dict[tuple[int, str], int] = {}  # (project id, deployment) -> refusals

    def figures(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(project, deployment, counters) of every deployment this process has served."""
        return [(g.project, g.name, g.stats.snapshot()) for g in list(self._guards.values())]

    def of(self, view: DeploymentView) -> Guard:
        """The guard of ``view``'s deployment, its monitor and logger matching the view."""
        guard = self._guards.get(view.id)
        if guard is None:
            guard = self._guards[view.id] = Guard(view.project, view.name)
        self._monitor(guard, view)
        self._logger(guard, view)
        return guard

    def _monitor(self, guard: Guard, view: DeploymentView) -> None:
        key = view.extra.get("canary_key")
        if key == guard.monitor_key:
            return
        guard.monitor_key, guard.acted, guard.monitor = key, False, None
        policy = view.extra.get("canary_policy") or {}
        if view.canary is not None and key is not None:
            guard.monitor = CanaryMonitor(CanaryPolicy(**policy), time.time())

    def _logger(self, guard: Guard, view: DeploymentView) -> None:
        rate = float(view.settings.get("log_sample_rate", 0.0))
        key = (rate,)
        if key == guard.logger_key:
            return
        if guard.logger is not None:
            guard.logger.close(wait=False)  # on the event loop: the thread writes the rest
        guard.logger_key, guard.logger = key, None
        if rate > 0 and self.tables is not None:
            from underlay.serving.predlog_writer import open_logger

            guard.logger = open_logger(
                self.platform,
                self.tables,
                view.project_id,
                view.name,
                model=view.model,
                sample_rate=rate,
                flush_interval_s=LOG_FLUSH_S,
                require_deployment=True,
            )

    # -- before: limits and the extraction alarm ------------------------------------------------

    def admit(
        self, view: DeploymentView, token_key: str, inputs: dict[str, np.ndarray], rows: int
    ) -> None:
        """Charge ``rows`` to the token's limits (:class:`RateLimited` when over) and feed the
        extraction alarm."""
        spec = view.extra.get("limit_spec")
        now = time.time()
        key = f"{view.project_id}/{view.name}"
        counted = (view.project_id, token_key)
        self.token_rows[counted] = self.token_rows.get(counted, 0) + rows
        if isinstance(spec, LimitSpec):
            decision = self.limiter.check(token_key, key, spec, rows, now)
            if not decision.allowed:
                where = (view.project_id, view.name)
                self.rate_limited[where] = self.rate_limited.get(where, 0) + 1
                raise RateLimited(
                    f"{decision.reason} for this token on deployment {view.name!r}",
                    retry_after=max(1, math.ceil(decision.retry_after_s)),
                )
        if len(inputs) == 1:
            matrix = next(iter(inputs.values()))
            if matrix.dtype.kind in "iuf":
                reason = self.detector.observe(token_key, key, matrix, now)
                if reason is not None:
                    asyncio.get_running_loop().run_in_executor(
                        None, self._alert, view, token_key, reason
                    )

    def _alert(self, view: DeploymentView, token_key: str, reason: str) -> None:
        from underlay.monitoring.alerts import raise_alert
        from underlay.monitoring.rules import evaluate_rules
        from underlay.store import Scope

        message = (
            f"token {token_key} on deployment {view.name!r} looks like model extraction: {reason}"
        )
        log.warning(message)
        with self.platform.db.session(Scope.everything()) as session:
            raise_alert(
                session,
                project_id=view.project_id,
                kind="model-extraction",
                subject=f"{view.name}:{token_key}",
                message=message,
                severity="error",
                source="security",
                details={"deployment": view.name, "token": token_key, "reason": reason},
            )
            evaluate_rules(
                session,
                project_id=view.project_id,
                source="security",
                subject=view.name,
                values={"extraction_events": 1.0},
            )

    # -- after: counters, canary, log -------------------------------------------------------------

    def observe(
        self,
        guard: Guard,
        view: DeploymentView,
        arm: str,
        latency_s: float,
        status: int,
        model_ok: bool,
    ) -> None:
        guard.stats.observe_request(latency_s, status)
        monitor = guard.monitor
        if monitor is None or guard.acted:
            return
        now = time.time()
        monitor.observe("canary" if arm == "canary" else "stable", latency_s, model_ok, now)
        if now - guard.verdict_at < VERDICT_EVERY_S:
            return
        guard.verdict_at = now
        verdict = monitor.verdict(now)
        if verdict.state == "rollback":
            guard.acted = True
            asyncio.get_running_loop().run_in_executor(
                None, self._rollback, view, verdict.reason, verdict.figures
            )
        elif verdict.state == "passed":
            guard.acted = True
            asyncio.get_running_loop().run_in_executor(
                None, self._passed, view, verdict.reason, verdict.figures
            )

    def _rollback(self, view: DeploymentView, reason: str, figures: dict[str, Any]) -> None:
        """The automatic rollback: an event and an audit entry, like a manual one."""
        from underlay.identity import SYSTEM
        from underlay.serving import lifecycle

        resource = f"project:{view.project}/deployment:{view.name}"
        actor = type(SYSTEM)(user_id=0, name=CANARY_ACTOR, is_admin=True)
        try:
            with self.platform.unit(
                actor, "deployment.rollback", resource, project=view.project
            ) as u:
                from underlay.store.models import Project

                project = u.session.get(Project, view.project_id)
                assert project is not None
                lifecycle.rollback(
                    u.session,
                    self.platform,
                    project,
                    CANARY_ACTOR,
                    view.name,
                    f"automatic: {reason}",
                    auto=True,
                    figures=figures,
                )
                u.detail = {"auto": True, "reason": reason[:300]}
        except Exception:  # the canary may be gone meanwhile (promoted, removed)
            log.exception("automatic rollback of %s failed", view.name)
        self.platform.wake_scheduler()

    def _passed(self, view: DeploymentView, reason: str, figures: dict[str, Any]) -> None:
        from underlay.serving import service
        from underlay.serving.models import Deployment
        from underlay.store import Scope

        with self.platform.db.session(Scope.everything()) as session:
            found = session.get(Deployment, view.id)
            if found is not None and found.canary_state == "running":
                found.canary_state = "passed"
                service.record(
                    session, found, "canary.passed", CANARY_ACTOR, reason, figures=figures
                )

    def log(
        self,
        guard: Guard,
        request_id: str,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        latency_s: float,
        version: int,
        arm: str,
    ) -> None:
        if guard.logger is not None:
            guard.logger.record(
                request_id, inputs, outputs, latency_s * 1000, version, time.time(), arm=arm
            )

    # -- reading and shutdown -----------------------------------------------------------------

    def snapshot(self, deployment_id: int) -> dict[str, Any]:
        guard = self._guards.get(deployment_id)
        if guard is None:
            return DeploymentStats().snapshot()
        found = guard.stats.snapshot()
        if guard.logger is not None:
            found["prediction_log"] = guard.logger.stats()
        if guard.monitor is not None:
            found["canary"] = guard.monitor.figures(time.time())
        return found

    def prometheus(self, projects: Collection[str] | None = None) -> str:
        """The deployments' counters in the Prometheus text format; only those of
        ``projects`` (names) when given."""
        series = [
            ({"project": g.project, "deployment": g.name}, g.stats)
            for g in list(self._guards.values())
            if projects is None or g.project in projects
        ]
        return prometheus_text(series)

    def forget(self, deployment_id: int, *, wait: bool = False) -> None:
        """Drop a deployment's guard; its logger writes what is left in its own thread
        (``wait``: here, for the shutdown, which runs off the event loop)."""
        guard = self._guards.pop(deployment_id, None)
        if guard is not None and guard.logger is not None:
            guard.logger.close(timeout_s=5.0, wait=wait)

    def close(self) -> None:
        for deployment_id in list(self._guards):
            self.forget(deployment_id, wait=True)
        store = self.limiter.budgets
        if isinstance(store, SqlBudgetStore):
            store.release()

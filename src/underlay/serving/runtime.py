"""The serving runtime of a server process: a thread that reconciles deployments (restarts,
rolling updates, drains; :func:`underlay.serving.lifecycle.reconcile`) and checks every
replica's readiness with its secret.

A replica that fails :data:`FAILS_UNHEALTHY` checks in a row is marked ``unhealthy`` (the data
plane stops routing to it); one that stays unhealthy for :data:`LIVENESS_S` seconds has its job
cancelled, and the reconciler starts a new one for its slot.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
from sqlalchemy import select

from underlay.errors import UnderlayError
from underlay.platform import Platform
from underlay.serving import lifecycle
from underlay.serving.models import Deployment, DeploymentReplica
from underlay.serving.service import _cancel_jobs, replica_secret, touch
from underlay.store import Scope
from underlay.store.types import utcnow

log = logging.getLogger(__name__)
INTERVAL_S = 1.0  # routes wake it at once after a change
FAILS_UNHEALTHY = 2
LIVENESS_S = 10.0
CHECK_TIMEOUT_S = 1.0


class ServingRuntime:
    def __init__(self, platform: Platform, interval_s: float = INTERVAL_S) -> None:
        self.platform = platform
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._fails: dict[int, int] = {}
        self._unhealthy_since: dict[int, float] = {}
        self._http = httpx.Client(timeout=CHECK_TIMEOUT_S, trust_env=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="underlay-serving", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self._http.close()

    def replica_jobs(self) -> set[int]:
        """The jobs serving replicas now (the compute runtime stops those this server's own
        agent runs when the server stops: replicas must not outlive their server)."""
        with self.platform.db.session(Scope.everything()) as session:
            return lifecycle.live_replica_jobs(session)

    def stopped_with_server(self, job_ids: set[int]) -> None:
        """Replicas whose jobs stopped with this server: no longer routed to; the next start
        restarts their slots once their agent reports the ends."""
        if job_ids:
            with self.platform.db.session(Scope.everything()) as session:
                lifecycle.stopped_with_server(session, job_ids)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except (UnderlayError, OSError) as exc:
                log.warning("serving reconcile failed: %s", exc)
            except Exception:  # a bug must not stop the loop that heals deployments
                log.exception("serving reconcile failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def step(self) -> None:
        with self.platform.db.session(Scope.everything()) as session:
            if lifecycle.reconcile(session, self.platform):
                self.platform.wake_scheduler()
        self._check_health()

    def _check_health(self) -> None:
        with self.platform.db.session(Scope.everything()) as session:
            rows = [
                (r.id, r.url, replica_secret(session, self.platform, r), r.state)
                for r in session.scalars(
                    select(DeploymentReplica).where(
                        DeploymentReplica.state.in_(("ready", "unhealthy")),
                        DeploymentReplica.url.is_not(None),
                    )
                )
            ]
        changes: dict[int, str] = {}
        now = time.monotonic()
        for replica_id, url, secret, state in rows:
            ok = self._probe(f"{url}/ready", secret)
            if ok:
                self._fails.pop(replica_id, None)
                self._unhealthy_since.pop(replica_id, None)
                if state == "unhealthy":
                    changes[replica_id] = "ready"
                continue
            fails = self._fails[replica_id] = self._fails.get(replica_id, 0) + 1
            if fails >= FAILS_UNHEALTHY and state == "ready":
                changes[replica_id] = "unhealthy"
                self._unhealthy_since[replica_id] = now
            elif (
                state == "unhealthy"
                and now - self._unhealthy_since.get(replica_id, now) > LIVENESS_S
            ):
                changes[replica_id] = "restart"
        if changes:
            self._apply(changes)

    def _probe(self, url: str, secret: str) -> bool:
        try:
            return self._http.get(url, headers={"x-replica-secret": secret}).status_code == 200
        except httpx.HTTPError:
            return False

    def _apply(self, changes: dict[int, str]) -> None:
        with self.platform.db.session(Scope.everything()) as session:
            for replica_id, change in changes.items():
                replica = session.get(DeploymentReplica, replica_id)
                if replica is None or replica.state not in ("ready", "unhealthy"):
                    continue
                deployment = session.get(Deployment, replica.deployment_id)
                if change == "restart":
                    replica.reason = f"not ready for {LIVENESS_S:.0f} s: restarting"
                    _cancel_jobs(session, self.platform, [replica])
                else:
                    replica.state = change
                    replica.reason = (
                        "readiness check failed" if change == "unhealthy" else "serving"
                    )
                replica.updated_at = utcnow()
                if deployment is not None:
                    touch(deployment)

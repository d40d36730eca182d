"""The autoscaler in the live loop: one step every ``autoscaler.interval_s``, on the leader.

A step asks the provider for its instances, requeues the work of spot instances it lost
(:func:`underlay.compute.nodes.reclaim_node`), reads the scheduler's snapshot, calls the pure
:func:`~underlay.compute.autoscaler.policy.plan_scaling` and carries out its plan: a node to
remove is cordoned in the same transaction that finds it idle (so no round places work on
it after that) and then terminated and retired; a launch mints one agent token per node. Each
launch and termination is audited (actor ``autoscaler``).

Groups' room to grow is shown to the scheduler as nodes that are not up (unhealthy), so work
only a group's nodes could host waits for them instead of being refused (:meth:`headroom`).
Idle times are kept in memory: a new leader starts them afresh (it waits longer, never less).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay import identity
from underlay.audit import AuditLog
from underlay.compute import budgets, nodes
from underlay.compute.autoscaler.policy import (
    Member,
    Pool,
    ScaleInput,
    ScalePlan,
    busy_nodes,
    plan_scaling,
    track_idle,
)
from underlay.compute.autoscaler.providers import (
    GROUP_LABEL,
    Instance,
    LaunchContext,
    Provider,
    group_price,
    groups_of,
    headroom_nodes,
)
from underlay.compute.models import NodeRow
from underlay.compute.scheduler import Node, Snapshot, decide, policy_config
from underlay.compute.snapshots import build_snapshot
from underlay.config import Settings
from underlay.store import Database, Scope
from underlay.store.models import Project
from underlay.store.types import utcnow

log = logging.getLogger(__name__)
ACTOR = "autoscaler"


def make_provider(settings: Settings) -> Provider:
    kind = settings.compute.autoscaler.provider
    if kind == "aws":
        from underlay.compute.autoscaler.aws import Ec2Provider

        return Ec2Provider(settings)
    from underlay.compute.autoscaler.local import LocalProcessProvider

    return LocalProcessProvider(settings)


class Autoscaler:
    """The live autoscaler of one leader (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        settings: Settings,
        server_url: str,
        provider: Provider | None = None,
    ) -> None:
        self.db, self.audit, self.settings = db, audit, settings
        self.config = settings.compute.autoscaler
        self.groups = groups_of(self.config)
        self.provider = provider or make_provider(settings)
        self.server_url = server_url
        self.pools = tuple(Pool(g, group_price(self.provider, g)) for g in self.groups)
        self.idle: dict[str, float | None] = {}
        self.present: dict[str, int] = {}
        self.last_plan: ScalePlan | None = None
        self._next = 0.0

    def headroom(self) -> tuple[Node, ...]:
        return headroom_nodes(self.groups, self.present)

    def close(self) -> None:
        self.provider.close()

    def step(self, force: bool = False) -> ScalePlan | None:
        """One autoscaling step, if ``interval_s`` has passed since the last (or ``force``)."""
        now_s = time.monotonic()
        if not force and now_s < self._next:
            return None
        self._next = now_s + self.config.interval_s
        instances = self.provider.list()
        live = [i for i in instances if i.state in ("pending", "running")]
        with self.db.session(Scope.everything()) as session:
            for lost in (i for i in instances if i.state == "reclaimed"):
                self._reclaimed(session, lost)
            self.present = {g.name: sum(1 for i in live if i.group == g.name) for g in self.groups}
            plan, removable = self._plan(session, live)
        by_node = {i.node: i for i in live}
        for node in removable:
            self._terminate(by_node[node], plan)
        for launch in plan.launches:
            self._launch(launch.group, launch.count, launch.reason)
        self._retire_strays(live)
        self.last_plan = plan
        return plan

    def _plan(self, session: Session, live: list[Instance]) -> tuple[ScalePlan, list[str]]:
        now = utcnow()
        config = policy_config(self.settings.compute.policy)
        snapshot, _ = build_snapshot(session, config, now)
        snapshot = replace(snapshot, nodes=(*snapshot.nodes, *self.headroom()))
        decisions = decide(snapshot)
        rows = session.execute(select(NodeRow.name, NodeRow.status))
        status = {name: state for name, state in rows}
        clock = now.timestamp()
        # only a ready node can be idle (a cordoned one is left alone); a lost one is not up
        mine = [i.node for i in live if status.get(i.node) == "ready"]
        self.idle = track_idle(self.idle, mine, busy_nodes(snapshot, decisions), clock)
        members = tuple(
            Member(
                i.node,
                i.group,
                status.get(i.node, "lost") != "lost",
                i.launched_at,
                self.idle.get(i.node),
            )
            for i in live
        )
        plan = plan_scaling(
            ScaleInput(
                snapshot=snapshot,
                decisions=decisions,
                pools=self.pools,
                members=members,
                blocked_projects=_blocked(session, snapshot, now, self.settings),
                max_price_per_hour=self.config.max_price_per_hour,
                idle_s=self.config.idle_s,
                launch_timeout_s=self.config.launch_timeout_s,
            )
        )
        removable = []
        for t in plan.terminates:
            row = session.scalar(select(NodeRow).where(NodeRow.name == t.node))
            if row is not None and not nodes.node_is_idle(session, t.node):
                continue  # work was placed on it since the snapshot: keep it
            if row is not None:
                row.status, row.status_reason = "cordoned", f"scaling down: {t.reason}"[:500]
            removable.append(t.node)
        return plan, removable

    def _reclaimed(self, session: Session, instance: Instance) -> None:
        reason = f"spot node {instance.node} was reclaimed by the provider"
        jobs = nodes.reclaim_node(session, self.audit, instance.node, reason, self.settings)
        self._audit(session, "node.reclaimed", instance.node, {"requeued_jobs": jobs})
        nodes.retire_node(session, instance.node)

    def _terminate(self, instance: Instance, plan: ScalePlan) -> None:
        reason = next((t.reason for t in plan.terminates if t.node == instance.node), "")
        self.provider.terminate([instance.id])
        with self.db.session(Scope.everything()) as session:
            nodes.retire_node(session, instance.node)
            self._audit(session, "node.terminate", instance.node, {"reason": reason})
        log.info("autoscaler terminated node %s: %s", instance.node, reason)

    def _launch(self, group_name: str, count: int, reason: str) -> None:
        group = next(g for g in self.groups if g.name == group_name)
        context = LaunchContext(self.server_url, self._token_for)
        launched = self.provider.launch(group, count, context)
        with self.db.session(Scope.everything()) as session:
            for instance in launched:
                detail = {"group": group.name, "spot": group.spot, "reason": reason}
                self._audit(session, "node.launch", instance.node, detail)
        self.present[group.name] = self.present.get(group.name, 0) + len(launched)
        log.info("autoscaler launched %d node(s) of %s: %s", len(launched), group.name, reason)

    def _token_for(self, node: str) -> str:
        with self.db.session(Scope.everything()) as session:
            _token, secret = identity.create_agent_token(session, node)
            self._audit(session, "token.create", f"{node}/agent-token", {"kind": "agent"})
        return secret

    def _retire_strays(self, live: list[Instance]) -> None:
        """Lost nodes of a group whose instance is gone (it died on its own) are removed."""
        known = {i.node for i in live}
        with self.db.session(Scope.everything()) as session:
            for row in session.scalars(select(NodeRow).where(NodeRow.status == "lost")):
                labels = json.loads(row.labels or "[]")
                grouped = any(label.startswith(f"{GROUP_LABEL}=") for label in labels)
                if grouped and row.name not in known:
                    nodes.retire_node(session, row.name)

    def _audit(self, session: Session, action: str, node: str, detail: dict[str, object]) -> None:
        resource = f"node:{node}"
        self.audit.append(
            session, actor=ACTOR, action=action, resource=resource, outcome="ok", detail=detail
        )


def _blocked(
    session: Session, snapshot: Snapshot, now: dt.datetime, settings: Settings
) -> frozenset[str]:
    """Projects with pending work whose budget is spent: their work launches nothing."""
    names = {w.project for w in snapshot.pending}
    out = set()
    for project in session.scalars(select(Project).where(Project.name.in_(names))):
        status = budgets.budget_status(session, project.id, now, settings)
        if status.state == "blocked":
            out.add(project.name)
    return frozenset(out)

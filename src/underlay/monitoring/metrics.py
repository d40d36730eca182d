"""Prometheus metrics of the platform, as one scrape seen by one caller.

What a caller sees depends on who they are (names and labels: ``docs/monitoring.md``):

- a **global admin** sees every series: the API's request latency per route template, the
  scheduler's round times, nodes and accelerators, and every project's jobs, queue,
  deployments and alerts (alerts of no project with ``project=""``);
- a **project member** (any role) sees only the series labelled with their projects: jobs by
  state, queue depth, serving counters, alerts. Platform-wide series (API, scheduler, nodes)
  are for admins only: they show other tenants' activity;
- a token with no project sees a page with no samples (200, not 403: the same answer as an
  empty list, and a scrape that keeps working once the user is given a project).

Counts come from the metadata store at scrape time (cheap grouped counts); API latency, round
times and serving counters are this process's (with several server workers, each has its
own and Prometheus sums them).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from sqlalchemy import func, select

from underlay.compute.models import AcceleratorRow, Alert, Job, NodeRow
from underlay.compute.states import JobState
from underlay.monitoring.alert_models import AlertDelivery
from underlay.monitoring.reports import drift_families
from underlay.store.models import Project

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from underlay.compute.loop import RoundTimes

API_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MIB = 1024 * 1024


def api_latency_histogram() -> Histogram:
    """The API's request latency, per method, route template and status; one per app (not
    registered globally, so several apps in one process keep their own)."""
    return Histogram(
        "underlay_api_request_duration_seconds",
        "Time to answer an API request, by method, route template and status.",
        ("method", "route", "status"),
        buckets=API_LATENCY_BUCKETS,
        registry=None,
    )


def api_counts(histogram: Histogram) -> tuple[float, float]:
    """(answers, answers with status 400 or more) the API gave so far, from ``histogram``."""
    total = errors = 0.0
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                total += sample.value
                if sample.labels.get("status", "0")[:1] in ("4", "5"):
                    errors += sample.value
    return total, errors


@dataclass(frozen=True)
class Sources:
    """This process's in-memory figures; None where this process has none."""

    api: Histogram | None = None
    rounds: RoundTimes | None = None
    serving: Callable[[Collection[str] | None], str] | None = None  # text for project names


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(session: Session, project_ids: frozenset[int] | None, sources: Sources) -> str:
    """The exposition for a caller who may see ``project_ids`` (None: everything, an admin)."""
    admin = project_ids is None
    names = _projects(session, project_ids)
    families: list[Metric] = []
    families += _jobs(session, names)
    families += _alerts(session, names, admin)
    families += drift_families(session, names)
    if admin:
        families += _nodes(session)
        families += _rounds(sources.rounds)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    if admin and sources.api is not None:
        registry.register(sources.api)
    text = generate_latest(registry).decode()
    if sources.serving is not None and (admin or names):
        text += sources.serving(None if admin else set(names.values()))
    return text


def _projects(session: Session, project_ids: frozenset[int] | None) -> dict[int, str]:
    query = select(Project.id, Project.name)
    if project_ids is not None:
        if not project_ids:
            return {}
        query = query.where(Project.id.in_(sorted(project_ids)))
    return {pid: name for pid, name in session.execute(query)}


def _jobs(session: Session, names: dict[int, str]) -> list[Metric]:
    jobs = GaugeMetricFamily(
        "underlay_jobs", "Jobs by project and state.", labels=("project", "state")
    )
    queue = GaugeMetricFamily(
        "underlay_scheduler_queue_depth",
        "Jobs waiting to be admitted by the scheduler (state queued), by project.",
        labels=("project",),
    )
    counts: dict[tuple[int, str], int] = {}
    if names:
        query = (
            select(Job.project_id, Job.state, func.count())
            .where(Job.project_id.in_(sorted(names)))
            .group_by(Job.project_id, Job.state)
        )
        counts = {(pid, state): n for pid, state, n in session.execute(query)}
    for pid, name in sorted(names.items(), key=lambda item: item[1]):
        for state in JobState:
            jobs.add_metric((name, state.value), counts.get((pid, state.value), 0))
        queue.add_metric((name,), counts.get((pid, JobState.queued.value), 0))
    return [jobs, queue]


def _alerts(session: Session, names: dict[int, str], admin: bool) -> list[Metric]:
    labels = ("project", "kind", "severity")
    open_ = GaugeMetricFamily(
        "underlay_alerts_open",
        "Alerts not yet resolved, by project, kind and severity.",
        labels=labels,
    )
    raised = CounterMetricFamily(
        "underlay_alerts_raised", "Alerts raised, by project, kind and severity.", labels=labels
    )
    deliveries = CounterMetricFamily(
        "underlay_alert_deliveries",
        "Webhook deliveries of alerts, by project and state (pending, delivered, failed).",
        labels=("project", "state"),
    )
    unresolved_ = Alert.resolved_at.is_(None)
    query = select(
        Alert.project_id, Alert.kind, Alert.severity, unresolved_, func.count()
    ).group_by(Alert.project_id, Alert.kind, Alert.severity, unresolved_)
    sent = select(AlertDelivery.project_id, AlertDelivery.state, func.count()).group_by(
        AlertDelivery.project_id, AlertDelivery.state
    )
    if not admin:
        if not names:
            return [open_, raised, deliveries]
        query = query.where(Alert.project_id.in_(sorted(names)))
        sent = sent.where(AlertDelivery.project_id.in_(sorted(names)))
    totals: dict[tuple[str, str, str], list[int]] = {}
    for pid, kind, severity, unresolved, n in session.execute(query):
        if pid is not None and pid not in names:
            continue  # a purged project's leftovers
        key = ("" if pid is None else names[pid], kind, severity)
        pair = totals.setdefault(key, [0, 0])
        pair[0] += n if unresolved else 0
        pair[1] += n
    for key, (unresolved_n, total) in sorted(totals.items()):
        open_.add_metric(key, unresolved_n)
        raised.add_metric(key, total)
    for pid, state, n in sorted((pid, state, n) for pid, state, n in session.execute(sent)):
        if pid in names:
            deliveries.add_metric((names[pid], state), n)
    return [open_, raised, deliveries]


def _nodes(session: Session) -> list[Metric]:
    def gauge(name: str, doc: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    node_labels = ("node",)
    up = gauge(
        "underlay_node_up", "1 when the node is ready, 0 when lost or cordoned.", node_labels
    )
    cpu = gauge("underlay_node_cpu_utilization_ratio", "CPU busy share, 0 to 1.", node_labels)
    cores = gauge("underlay_node_cpu_cores", "CPU cores the node offers.", node_labels)
    mem = gauge("underlay_node_memory_bytes", "Memory the node offers.", node_labels)
    acc_labels = ("node", "index", "vendor", "type")
    util = gauge(
        "underlay_accelerator_utilization_ratio",
        "Share of time a kernel ran, 0 to 1.", acc_labels,
    )  # fmt: skip
    used = gauge("underlay_accelerator_memory_used_bytes", "Accelerator memory in use.", acc_labels)
    total = gauge("underlay_accelerator_memory_bytes", "Accelerator memory.", acc_labels)
    power = gauge(
        "underlay_accelerator_power_watts", "Power drawn now (when the device reports it).",
        acc_labels,
    )  # fmt: skip
    healthy = gauge("underlay_accelerator_healthy", "1 when healthy, else 0.", acc_labels)
    by_id: dict[int, str] = {}
    for node in session.scalars(select(NodeRow).order_by(NodeRow.name)):
        by_id[node.id] = node.name
        up.add_metric((node.name,), 1.0 if node.status == "ready" else 0.0)
        cpu.add_metric((node.name,), node.cpu_utilization)
        cores.add_metric((node.name,), node.cpu_milli / 1000)
        mem.add_metric((node.name,), node.memory_mib * MIB)
    query = select(AcceleratorRow).order_by(AcceleratorRow.node_id, AcceleratorRow.index)
    for acc in session.scalars(query):
        labels = (by_id.get(acc.node_id, ""), str(acc.index), acc.vendor, acc.type)
        util.add_metric(labels, acc.utilization)
        used.add_metric(labels, acc.memory_used_mib * MIB)
        total.add_metric(labels, acc.memory_mib * MIB)
        if acc.power_watts is not None:
            power.add_metric(labels, acc.power_watts)
        healthy.add_metric(labels, 1.0 if acc.healthy else 0.0)
    return [up, cpu, cores, mem, util, used, total, power, healthy]


def _rounds(rounds: RoundTimes | None) -> Iterator[Metric]:
    if rounds is None:
        return
    yield SummaryMetricFamily(
        "underlay_scheduler_round_duration_seconds",
        "Time of the scheduling rounds this process ran (as the leader).",
        count_value=rounds.count,
        sum_value=rounds.total_s,
    )
    if rounds.last_s is not None:
        yield GaugeMetricFamily(
            "underlay_scheduler_last_round_duration_seconds",
            "Time of the last scheduling round this process ran.",
            value=rounds.last_s,
        )


def scope_ids(is_admin: bool, roles: Iterable[int]) -> frozenset[int] | None:
    """The project ids a caller may see metrics of (None: all)."""
    return None if is_admin else frozenset(roles)


__all__ = ["Sources", "api_latency_histogram", "render", "scope_ids"]

"""What the datasets and deployments pages show, through the services the API routes call.

As in :mod:`underlay.ui.views_ml`: one unit of work for the caller's actor, the project
looked up with :func:`underlay.identity.read_project` (another project's object is a
:class:`~underlay.errors.NotFound`), the same service functions as ``api/routes/datasets.py``,
``tables.py``, ``deployments.py`` and ``monitoring.py``. The SQL box runs through the SQL
service of the tables route, so a query sees only the caller's project's tables and is
audited as ``table.sql`` like the API's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from underlay import identity
from underlay.api.routes.datasets import dataset_read, version_read
from underlay.api.routes.tables import table_read
from underlay.data import datasets, quality
from underlay.data.schemas import DatasetRead, TableRead, TableVersionRead, VersionRead
from underlay.data.sql import run as run_sql
from underlay.data.tables import TableStore
from underlay.errors import InvalidInput, NotFound
from underlay.identity import Action, Actor
from underlay.monitoring import checks
from underlay.platform import Platform, audit_text
from underlay.serving import lifecycle, service
from underlay.serving.dataplane import DataPlane
from underlay.serving.schemas import DeploymentEventRead, DeploymentRead

SQL_ROWS = 200
"""Rows the SQL box shows; the rest of a result is not read."""
DRIFT_REPORTS = 20


@dataclass
class DataList:
    datasets: list[DatasetRead]
    tables: list[TableRead]


@dataclass
class TableView:
    table: TableRead
    versions: list[TableVersionRead]
    checks: list[str]


@dataclass
class SqlAnswer:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    tables: list[str]


@dataclass
class DeploymentView:
    deployment: DeploymentRead
    events: list[DeploymentEventRead]
    stats: dict[str, Any]
    drift: list[dict[str, Any]] = field(default_factory=list)


def list_data(platform: Platform, store: TableStore, actor: Actor, project: str) -> DataList:
    """The project's datasets (with their latest version) and tables."""
    with platform.unit(actor, "dataset.list", f"project:{project}/datasets", audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        found_sets = [dataset_read(d, v) for d, v in datasets.list_all(u.session, found.id)]
        tables = [table_read(store, t) for t in store.list_tables(u.session, found.id)]
        return DataList(found_sets, tables)


def read_dataset(
    platform: Platform, actor: Actor, project: str, name: str
) -> tuple[DatasetRead, list[VersionRead]]:
    resource = f"project:{project}/dataset:{audit_text(name)}"
    with platform.unit(actor, "dataset.read", resource, audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        dataset = datasets.get(u.session, found.id, name)
        versions = datasets.list_versions(u.session, found.id, name)
        return (
            dataset_read(dataset, versions[0] if versions else None),
            [version_read(name, v) for v in versions],
        )


def read_table(
    platform: Platform, store: TableStore, actor: Actor, project: str, name: str
) -> TableView:
    """A table's schema, its versions (each with its quality report and PII findings) and the
    checks its versions must pass."""
    resource = f"project:{project}/table:{audit_text(name)}"
    with platform.unit(actor, "table.read_meta", resource, audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        table = store.read(u.session, found.id, name)
        versions = [TableVersionRead.model_validate(v) for v in store.versions(u.session, table)]
        spec = quality.load(table.checks)
        labels = [c.label() for c in spec.checks] if spec else []
        return TableView(table_read(store, table, with_schema=True), versions, labels)


def sql_query(
    platform: Platform, store: TableStore, actor: Actor, project: str, query: str, client: str
) -> SqlAnswer:
    """Run one SELECT over the project's tables (the API's SQL service) and keep the first
    :data:`SQL_ROWS` rows; audited as ``table.sql`` with the query."""
    with platform.unit(
        actor, "table.sql", f"project:{project}/sql", project=project, client=client
    ) as u:
        u.detail = {"query": query[:2000], "face": "ui"}
        found = identity.read_project(u.session, project, actor)

        def resolve(table_name: str, version: int | None) -> Any:
            table = store.read(u.session, found.id, table_name)
            return store.published_dataset(table, store.published(u.session, table, version))

        result = run_sql(query, resolve, platform.settings.data)
        u.detail["tables"] = result.tables
        rows: list[list[Any]] = []
        for batch in result.batches:
            for row in batch.to_pylist():
                rows.append(list(row.values()))
                if len(rows) > SQL_ROWS:
                    break
            if len(rows) > SQL_ROWS:
                break
    return SqlAnswer(result.schema.names, rows[:SQL_ROWS], len(rows) > SQL_ROWS, result.tables)


# -- deployments -----------------------------------------------------------------------------


def list_deployments(platform: Platform, actor: Actor, project: str) -> list[DeploymentRead]:
    resource = f"project:{project}/deployments"
    with platform.unit(actor, "deployment.list", resource, audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        rows = service.list_deployments(u.session, found.id)
        return [service.render(u.session, found, d) for d in rows]


def read_deployment(
    platform: Platform, plane: DataPlane, actor: Actor, project: str, name: str
) -> DeploymentView:
    """A deployment with its replicas, traffic split and canary, its events, this server's
    counters (requests, errors, latency, batch sizes, canary figures) and its stored drift
    reports, newest first."""
    resource = f"project:{project}/deployment:{audit_text(name)}"
    with platform.unit(actor, "deployment.read", resource, audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        deployment = service.get_deployment(u.session, found.id, name)
        view = DeploymentView(
            service.render(u.session, found, deployment),
            [service.event_read(e) for e in service.list_events(u.session, found.id, name)],
            plane.guards.snapshot(deployment.id),
            checks.list_drift_reports(u.session, found.id, name, limit=DRIFT_REPORTS),
        )
    return view


def change_canary(
    platform: Platform,
    actor: Actor,
    project: str,
    name: str,
    verb: str,
    reason: str,
    client: str,
) -> DeploymentRead:
    """Promote the running canary or roll it back (members): the API's
    ``deployment.promote`` / ``deployment.rollback``, audited with the reason. The caller then
    wakes the scheduler and the serving reconciler, as the API's routes do."""
    if verb not in ("promote", "rollback"):
        raise NotFound(f"no canary action {audit_text(verb)}")
    if len(reason) > 1000 or any(ord(ch) < 32 for ch in reason):
        raise InvalidInput("reason must be one line of at most 1000 characters")
    resource = f"project:{project}/deployment:{audit_text(name)}"
    with platform.unit(actor, f"deployment.{verb}", resource, project=project, client=client) as u:
        found = identity.read_project(u.session, project, actor, Action.write)
        if verb == "promote":
            deployment = lifecycle.promote(u.session, platform, found, actor, name, reason)
        else:
            deployment = lifecycle.rollback(u.session, platform, found, actor.name, name, reason)
        u.detail = {"reason": reason, "face": "ui"}
        return service.render(u.session, found, deployment)

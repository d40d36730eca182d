"""What becomes of a deployment's prediction log and feedback tables: linked to the deployment
in lineage, removed with it (files included), and nothing of them left by a project's
deletion. A live server with real replicas (the serving tests' module server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

import underlay
from tests.conftest import LiveServer
from tests.serving.conftest import PROJECT, X, model, ready, wait_until
from underlay.client import Client
from underlay.data.models import DataTable, DataTableVersion
from underlay.serving.guard import LOG_FLUSH_S
from underlay.serving.models import Deployment, DeploymentReplica
from underlay.store import Scope
from underlay.store.models import LineageEdge

pytestmark = pytest.mark.slow
LOGS = ("{}_predictions", "{}_feedback")


def _tables(live: LiveServer, project_id: int) -> dict[str, Path]:
    """The project's tables and their folders."""
    root = Path(live.settings.tables_url)
    with live.platform.db.session(Scope.everything()) as s:
        rows = s.execute(
            select(DataTable.name, DataTable.id).where(DataTable.project_id == project_id)
        )
        return {name: root / str(project_id) / str(table_id) for name, table_id in rows}


def _log_and_label(client: Client, project: str, name: str, live: LiveServer, pid: int) -> None:
    client.predict(project, name, X[:2].tolist(), request_id=f"{name}-0001")
    wanted = {t.format(name) for t in LOGS[:1]}
    wait_until(lambda: wanted <= set(_tables(live, pid)), "the prediction log to be written")
    client.send_feedback(project, name, [{"request_id": f"{name}-0001", "label": 1}])


def test_a_deployments_logs_are_in_its_lineage_and_go_with_it(
    live: LiveServer, admin: Client
) -> None:
    name = "churn-logs"
    pid = admin.read_project(PROJECT).id
    admin.deploy(PROJECT, name, "churn@1", replicas=1, log_sample_rate=1.0)
    ready(admin, name, 1)
    _log_and_label(admin, PROJECT, name, live, pid)
    logs = {t.format(name) for t in LOGS}
    folders = {n: p for n, p in _tables(live, pid).items() if n in logs}
    assert set(folders) == logs and all(p.exists() for p in folders.values())
    graph = admin.lineage(PROJECT, "deployment", name, direction="downstream")
    assert {(e.relation, e.dst.kind, e.dst.id) for e in graph.edges} == {
        ("logs_to", "table", table) for table in logs
    }
    upstream = admin.lineage(PROJECT, "table", f"{name}_predictions", direction="upstream")
    assert ("deployment", name) in {(n.kind, n.id) for n in upstream.nodes}

    # a request logged just before the removal: its late batch must not bring the log back
    admin.predict(PROJECT, name, X[:1].tolist(), request_id=f"{name}-0002")
    admin.delete_deployment(PROJECT, name)
    time.sleep(3 * LOG_FLUSH_S)
    assert not logs & set(_tables(live, pid))
    assert not any(p.exists() for p in folders.values())
    with live.platform.db.session(Scope.everything()) as s:
        edges = s.scalar(
            select(func.count())
            .select_from(LineageEdge)
            .where(LineageEdge.project_id == pid, LineageEdge.dst_id.in_(logs))
        )
        assert edges == 0


def test_deleting_a_project_leaves_none_of_its_deployments_or_logs(
    live: LiveServer, admin: Client
) -> None:
    project, name = "doomed", "churn-doomed"
    admin.create_project(project)
    with underlay.start_run(project, "churn", client=admin) as run:
        run.log_model(model(), "model", input_example=X[:5])
    admin.register_model(project, "churn", run=run.id, path="model")
    pid = admin.read_project(project).id
    admin.deploy(project, name, "churn@1", replicas=1, log_sample_rate=1.0)

    def serving() -> bool:
        found = admin.read_deployment(project, name)
        return found.ready_replicas == 1

    wait_until(serving, "the replica to serve", within_s=90)
    _log_and_label(admin, project, name, live, pid)
    folder = Path(live.settings.tables_url) / str(pid)
    assert folder.exists()

    admin.delete_project(project)
    wait_until(lambda: not folder.exists(), "the project's table files to go", within_s=10)
    time.sleep(3 * LOG_FLUSH_S)  # nor does a late log batch bring any of it back
    assert not folder.exists()
    with live.platform.db.session(Scope.everything()) as s:
        for table in (Deployment, DeploymentReplica, DataTable, DataTableVersion, LineageEdge):
            column = table.project_id
            left = s.scalar(select(func.count()).select_from(table).where(column == pid))
            assert left == 0, table.__tablename__

"""Lineage contract tests on SQLite and PostgreSQL: walks, the DAG rule, tenant scope."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, text

from underlay.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from underlay.lineage import (
    LineageGraph,
    ObjectRef,
    add_edge,
    delete_edges_for,
    downstream,
    lineage,
    upstream,
)
from underlay.schemas import LineageGraphRead
from underlay.store import Database, Scope
from underlay.store.models import LineageEdge, Project

DATA = ObjectRef("dataset_version", "sales@3")
RUN = ObjectRef("run", "41")
MODEL = ObjectRef("model_version", "churn@2")
DEPLOY = ObjectRef("deployment", "churn-web")


@pytest.fixture
def projects(db: Database) -> tuple[int, int]:
    with db.session(Scope.everything()) as s:
        a, b = Project(name="alpha"), Project(name="beta")
        s.add_all([a, b])
        s.flush()
        return a.id, b.id


def _chain(db: Database, project: int) -> None:
    with db.session(Scope.projects(project)) as s:
        add_edge(s, project, DATA, "trained", RUN)
        add_edge(s, project, RUN, "produced", MODEL)
        add_edge(s, project, MODEL, "deployed_as", DEPLOY)


def _distances(graph: LineageGraph) -> dict[str, int]:
    return {str(node): graph.distance[node] for node in graph.nodes}


def test_chain_walks_up_and_down(db: Database, projects: tuple[int, int]) -> None:
    a, _ = projects
    _chain(db, a)
    with db.session(Scope.projects(a)) as s:
        up = upstream(s, DEPLOY)
        assert up.root == DEPLOY and up.direction == "upstream"
        assert up.nodes == [DEPLOY, MODEL, RUN, DATA]
        assert _distances(up) == {
            "deployment:churn-web": 0,
            "model_version:churn@2": -1,
            "run:41": -2,
            "dataset_version:sales@3": -3,
        }
        assert up.edges == sorted(
            [(DATA, "trained", RUN), (RUN, "produced", MODEL), (MODEL, "deployed_as", DEPLOY)]
        )

        down = downstream(s, DATA)
        assert down.nodes == [DATA, RUN, MODEL, DEPLOY]
        assert down.distance[DEPLOY] == 3

        assert upstream(s, DEPLOY, depth=1).nodes == [DEPLOY, MODEL]
        two = downstream(s, DATA, 2)
        assert two.nodes == [DATA, RUN, MODEL]
        assert two.edges == [(DATA, "trained", RUN), (RUN, "produced", MODEL)]

        around = lineage(s, RUN)
        assert _distances(around) == {
            "run:41": 0,
            "dataset_version:sales@3": -1,
            "model_version:churn@2": 1,
            "deployment:churn-web": 2,
        }
        assert len(around.edges) == 3
        assert lineage(s, RUN, "upstream").nodes == [RUN, DATA]

        alone = lineage(s, ObjectRef("blob", "abc123"))
        assert alone.nodes == [ObjectRef("blob", "abc123")] and alone.edges == []


def test_diamond_counts_each_node_once_at_its_shortest_distance(
    db: Database, projects: tuple[int, int]
) -> None:
    a, _ = projects
    r1, r2 = ObjectRef("run", "1"), ObjectRef("run", "2")
    with db.session(Scope.projects(a)) as s:
        add_edge(s, a, DATA, "trained", r1)
        add_edge(s, a, DATA, "trained", r2)
        add_edge(s, a, r1, "produced", MODEL)
        add_edge(s, a, r2, "produced", MODEL)
        add_edge(s, a, MODEL, "deployed_as", DEPLOY)
    with db.session(Scope.projects(a)) as s:
        down = downstream(s, DATA)
        assert down.nodes == [DATA, r1, r2, MODEL, DEPLOY]
        assert [down.distance[n] for n in down.nodes] == [0, 1, 1, 2, 3]
        assert len(down.edges) == 5
        up = upstream(s, DEPLOY)
        assert up.nodes == [DEPLOY, MODEL, r1, r2, DATA]
        assert up.distance[DATA] == -3
        # A shortcut edge makes the model one hop from the data, however long the other paths.
        add_edge(s, a, DATA, "evaluated", MODEL)
        shortcut = downstream(s, DATA)
        assert shortcut.distance[MODEL] == 1 and shortcut.distance[DEPLOY] == 2
        assert len(shortcut.edges) == 6


def test_add_edge_is_idempotent(db: Database, projects: tuple[int, int]) -> None:
    a, _ = projects
    with db.session(Scope.projects(a)) as s:
        first = add_edge(s, a, DATA, "trained", RUN)
        again = add_edge(s, a, DATA, "trained", RUN)
        other = add_edge(s, a, DATA, "validated", RUN)
        assert again.id == first.id and other.id != first.id
    with db.session(Scope.projects(a)) as s:
        again = add_edge(s, a, DATA, "trained", RUN)
        assert again.id == first.id
        assert s.scalar(select(func.count()).select_from(LineageEdge)) == 2


def test_self_loops_and_cycles_are_refused(db: Database, projects: tuple[int, int]) -> None:
    a, b = projects
    _chain(db, a)
    with (
        pytest.raises(InvalidInput, match="cannot lead from run:41 to itself"),
        db.session(Scope.projects(a)) as s,
    ):
        add_edge(s, a, RUN, "retrained", RUN)
    with pytest.raises(Conflict, match="would close a cycle"), db.session(Scope.projects(a)) as s:
        add_edge(s, a, DEPLOY, "fed", DATA)
    with (
        pytest.raises(Conflict, match="refusing model_version:churn@2 --fed--> run:41"),
        db.session(Scope.projects(a)) as s,
    ):
        add_edge(s, a, MODEL, "fed", RUN)
    with db.session(Scope.projects(a)) as s:
        assert s.scalar(select(func.count()).select_from(LineageEdge)) == 3
    # Another project's edges never make a cycle here.
    with db.session(Scope.projects(b)) as s:
        add_edge(s, b, DEPLOY, "fed", DATA)


def test_walks_see_only_the_sessions_projects(db: Database, projects: tuple[int, int]) -> None:
    a, b = projects
    _chain(db, a)
    elsewhere = ObjectRef("run", "99")
    with db.session(Scope.projects(b)) as s:
        add_edge(s, b, DATA, "trained", elsewhere)
        add_edge(s, b, DEPLOY, "logged", ObjectRef("prediction_log", "p1"))

    with db.session(Scope.projects(a)) as s:
        assert downstream(s, DATA).nodes == [DATA, RUN, MODEL, DEPLOY]
        assert lineage(s, DEPLOY).nodes == [DEPLOY, MODEL, RUN, DATA]
        assert downstream(s, DATA, project_id=b).nodes == [DATA]
    with db.session(Scope.projects(b)) as s:
        assert downstream(s, DATA).nodes == [DATA, elsewhere]
        assert upstream(s, DEPLOY).nodes == [DEPLOY]
    with db.session(Scope.projects()) as s:
        assert lineage(s, DATA).nodes == [DATA]
    with db.session(Scope.everything()) as s:
        assert downstream(s, DATA, project_id=b).nodes == [DATA, elsewhere]
        # With every project visible a walk still stays inside each project: project b's
        # deployment log is not downstream of project a's data.
        assert downstream(s, DATA).nodes == [DATA, RUN, elsewhere, MODEL, DEPLOY]


def test_writes_outside_the_scope_are_refused(db: Database, projects: tuple[int, int]) -> None:
    a, b = projects
    with (
        pytest.raises(PermissionDenied, match=f"project {b} is outside"),
        db.session(Scope.projects(a)) as s,
    ):
        add_edge(s, b, DATA, "trained", RUN)
    with (
        pytest.raises(PermissionDenied, match=f"project {b} is outside"),
        db.session(Scope.projects(a)) as s,
    ):
        delete_edges_for(s, b, DATA)
    with (
        pytest.raises(NotFound, match="project 999 does not exist"),
        db.session(Scope.everything()) as s,
    ):
        add_edge(s, 999, DATA, "trained", RUN)
    session = db._sessions()  # a session that never got a scope
    try:
        with pytest.raises(PermissionDenied, match="without a tenant scope"):
            upstream(session, DATA)
    finally:
        session.close()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ObjectRef("Dataset", "1"), "kind must be a short lowercase word"),
        (lambda: ObjectRef("", "1"), "kind must be a short lowercase word"),
        (lambda: ObjectRef("k" * 33, "1"), "kind must be a short lowercase word"),
        (lambda: ObjectRef("run", ""), "id must be 1-128 characters"),
        (lambda: ObjectRef("run", "a b"), "id must be 1-128 characters"),
        (lambda: ObjectRef("run", "x" * 129), "id must be 1-128 characters"),
        (lambda: ObjectRef("run", "../etc"), "id must be 1-128 characters"),
        (lambda: ObjectRef("run", "a/b"), "id must be 1-128 characters"),
        (lambda: ObjectRef("run", 7), "id must be 1-128 characters"),  # type: ignore[arg-type]
    ],
)
def test_malformed_refs_are_refused(build: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        build()


def test_malformed_arguments_are_refused(db: Database, projects: tuple[int, int]) -> None:
    a, _ = projects
    with db.session(Scope.projects(a)) as s:
        with pytest.raises(InvalidInput, match="relation must be a short lowercase word"):
            add_edge(s, a, DATA, "Trained By", RUN)
        with pytest.raises(InvalidInput, match="depth must be between 1 and 1000"):
            upstream(s, DATA, depth=0)
        with pytest.raises(InvalidInput, match="direction must be upstream, downstream or both"):
            lineage(s, DATA, "sideways")  # type: ignore[arg-type]
    assert str(ObjectRef("blob", "sha256:ab.cd@3+x-1")) == "blob:sha256:ab.cd@3+x-1"


def test_delete_edges_for_removes_both_directions_in_one_project(
    db: Database, projects: tuple[int, int]
) -> None:
    a, b = projects
    _chain(db, a)
    _chain(db, b)
    with db.session(Scope.projects(a)) as s:
        assert delete_edges_for(s, a, RUN) == 2
        assert delete_edges_for(s, a, RUN) == 0
        assert downstream(s, DATA).nodes == [DATA]
        assert upstream(s, DEPLOY).nodes == [DEPLOY, MODEL]
    with db.session(Scope.projects(b)) as s:
        assert downstream(s, DATA).nodes == [DATA, RUN, MODEL, DEPLOY]


def _wait_for_a_lock_waiter(db: Database) -> None:
    """On PostgreSQL, wait until another session waits for the project's edge lock. SQLite
    serialises writers at ``BEGIN IMMEDIATE``: there the second writer cannot start its
    transaction before the first commits, so there is nothing to wait for."""
    if db.is_sqlite:
        return
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    deadline = time.monotonic() + 30
    # autocommit: each poll reads fresh activity statistics, not a transaction's snapshot
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while not conn.execute(query).scalar():
            assert time.monotonic() < deadline, "the second writer never waited for the lock"
            time.sleep(0.01)


def test_concurrent_edges_cannot_close_a_cycle(db: Database, projects: tuple[int, int]) -> None:
    a, _ = projects
    first_added, second_started = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        with db.session(Scope.projects(a)) as s:
            add_edge(s, a, DATA, "trained", RUN)
            first_added.set()
            second_started.wait(timeout=30)
            _wait_for_a_lock_waiter(db)  # the second writer is blocked behind this one
        outcome["first"] = "ok"

    def second() -> None:
        first_added.wait(timeout=30)
        second_started.set()
        try:
            with db.session(Scope.projects(a)) as s:
                add_edge(s, a, RUN, "fed", DATA)
            outcome["second"] = "ok"
        except Conflict as exc:
            outcome["second"] = exc

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcome["first"] == "ok"
    assert isinstance(outcome["second"], Conflict)
    with db.session(Scope.projects(a)) as s:
        assert downstream(s, DATA).edges == [(DATA, "trained", RUN)]


def test_graph_renders_as_the_api_schema(db: Database, projects: tuple[int, int]) -> None:
    a, _ = projects
    _chain(db, a)
    with db.session(Scope.projects(a)) as s:
        graph = lineage(s, RUN, depth=1)
    data = graph.as_dict()
    assert data["root"] == {"kind": "run", "id": "41"}
    assert data["nodes"] == [
        {"kind": "run", "id": "41", "distance": 0},
        {"kind": "dataset_version", "id": "sales@3", "distance": -1},
        {"kind": "model_version", "id": "churn@2", "distance": 1},
    ]
    produced = {
        "src": {"kind": "run", "id": "41"},
        "relation": "produced",
        "dst": {"kind": "model_version", "id": "churn@2"},
    }
    assert produced in data["edges"] and len(data["edges"]) == 2
    read = LineageGraphRead.model_validate(data)
    assert [n.distance for n in read.nodes] == [0, -1, 1]

"""The ml pages' data (ui/views_ml.py, ui/views_data.py, ui/views_sim.py) over real services:
the caller's scope and role are the API's, another project's objects are missing."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui.ml_world import EVIL, PROJECT, World, world
from underlay.errors import InvalidInput, NotFound, Unavailable
from underlay.ui import views_data, views_ml, views_sim


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    yield from world(tmp_path_factory.mktemp("ui-ml"), sqlite_template)


def test_runs_page_searches_orders_and_pages(seeded: World) -> None:
    platform, viewer = seeded.server.platform, seeded.actor("viewer")
    everything = views_ml.list_runs(platform, viewer, PROJECT)
    assert everything.total >= 5  # the three grid runs and the model runs
    ordered = views_ml.list_runs(
        platform,
        viewer,
        PROJECT,
        filter_expr="attributes.experiment = 'grid'",
        order_by="metrics.loss asc",
    )
    assert [r["id"] for r in ordered.rows] == seeded.runs[::-1]  # higher depth: lower loss
    assert ordered.metric_keys == ["acc", "loss"] and "lr" in ordered.param_keys
    page2 = views_ml.list_runs(
        platform, viewer, PROJECT, filter_expr="attributes.experiment = 'grid'", page=2, per_page=2
    )
    assert page2.total == 3 and page2.pages == 2 and len(page2.rows) == 1
    with pytest.raises(InvalidInput, match="bogus"):
        views_ml.list_runs(platform, viewer, PROJECT, filter_expr="bogus = 1")


def test_runs_of_another_project_are_missing(seeded: World) -> None:
    platform, outsider = seeded.server.platform, seeded.actor("outsider")
    with pytest.raises(NotFound, match="project 'ml' not found"):
        views_ml.list_runs(platform, outsider, PROJECT)
    viewer = seeded.actor("viewer")
    with pytest.raises(NotFound, match="not found"):
        views_ml.read_run(platform, viewer, PROJECT, seeded.other_run)
    with pytest.raises(NotFound, match="not found"):
        views_ml.compare_runs(platform, viewer, PROJECT, [seeded.runs[0], seeded.other_run])


def test_run_and_comparison_carry_metric_curves(seeded: World) -> None:
    platform, viewer = seeded.server.platform, seeded.actor("viewer")
    view = views_ml.read_run(platform, viewer, PROJECT, seeded.runs[2])
    assert view.run.params["lr"] == EVIL
    assert len(view.histories["loss"]) == 50 and view.histories["loss"][0] == (0, 1.0)
    both = views_ml.compare_runs(platform, viewer, PROJECT, seeded.runs[:2])
    assert both.table.params["lr"] == ["0.1", "0.01"]
    assert sorted(both.charts) == ["acc", "loss"]
    assert [len(points) for points in both.charts["loss"].values()] == [50, 50]
    with pytest.raises(InvalidInput, match="2 to 20 different runs"):
        views_ml.compare_runs(platform, viewer, PROJECT, [seeded.runs[0]] * 3)


def test_parse_ids_refuses_anything_but_numbers() -> None:
    assert views_ml.parse_ids("3, 5 7") == [3, 5, 7]
    for bad in ("1;drop", "-1", "1e3", ",".join(["1"] * 21)):
        with pytest.raises(InvalidInput, match="run numbers"):
            views_ml.parse_ids(bad)


def test_model_view_has_versions_alias_history_card_and_lineage(seeded: World) -> None:
    platform, viewer = seeded.server.platform, seeded.actor("viewer")
    (listed,) = views_ml.list_models(platform, viewer, PROJECT)
    assert listed.name == "churn" and listed.aliases == {"champion": 2}
    view = views_ml.read_model(platform, viewer, PROJECT, "churn")
    assert [v.version for v in view.versions] == [2, 1]
    assert [(e.version, e.previous_version, e.reason) for e in view.events] == [
        (2, 1, "retrained"),
        (1, None, "first good one"),
    ]
    assert view.version is not None and view.version.version == 2
    assert (
        view.card is not None and "&lt;script&gt;" in view.card.text and EVIL not in view.card.text
    )
    kinds = {n["kind"] for n in view.graph["nodes"]}
    assert {"model_version", "run"} <= kinds
    first = views_ml.read_model(platform, viewer, PROJECT, "churn", "1")
    assert first.version is not None and first.version.version == 1
    with pytest.raises(NotFound, match="project 'ml' not found"):
        views_ml.read_model(platform, seeded.actor("outsider"), PROJECT, "churn")


def test_datasets_tables_quality_and_pii(seeded: World) -> None:
    platform, store, viewer = (
        seeded.server.platform,
        seeded.app.state.tables,
        seeded.actor("viewer"),
    )
    listed = views_data.list_data(platform, store, viewer, PROJECT)
    assert [d.name for d in listed.datasets] == ["images"]
    assert [t.name for t in listed.tables] == ["customers"]
    dataset, versions = views_data.read_dataset(platform, viewer, PROJECT, "images")
    assert dataset.file_count == 2 and [v.message for v in versions] == ["first images"]
    table = views_data.read_table(platform, store, viewer, PROJECT, "customers")
    assert [c.name for c in table.table.columns or []] == ["id", "email", EVIL]
    assert table.checks and table.versions[0].pii_report
    with pytest.raises(NotFound, match="not found"):
        views_data.read_table(platform, store, viewer, PROJECT, "secrets")


def test_sql_box_sees_only_the_callers_tables(seeded: World) -> None:
    platform, store, viewer = (
        seeded.server.platform,
        seeded.app.state.tables,
        seeded.actor("viewer"),
    )
    answer = views_data.sql_query(
        platform, store, viewer, PROJECT, "SELECT id FROM customers ORDER BY id", "127.0.0.1"
    )
    assert answer.columns == ["id"] and answer.rows == [[1], [2], [3]] and not answer.truncated
    with pytest.raises(NotFound, match="secrets"):
        views_data.sql_query(platform, store, viewer, PROJECT, "SELECT * FROM secrets", "")
    with pytest.raises(InvalidInput):
        views_data.sql_query(platform, store, viewer, PROJECT, "DROP TABLE customers", "")


def test_deployment_view_has_traffic_canary_and_drift(seeded: World) -> None:
    platform, viewer = seeded.server.platform, seeded.actor("viewer")
    plane = seeded.app.state.dataplane
    (listed,) = views_data.list_deployments(platform, viewer, PROJECT)
    assert listed.name == "churn-api"
    view = views_data.read_deployment(platform, plane, viewer, PROJECT, "churn-api")
    assert {(t.arm, t.version) for t in view.deployment.traffic} == {("stable", 1), ("canary", 2)}
    assert view.deployment.canary is not None and view.deployment.canary.weight == 0.2
    assert view.stats["requests"] == 0
    assert view.drift[0]["flagged"] == ["x1"]
    with pytest.raises(NotFound, match="not found"):
        views_data.read_deployment(platform, plane, seeded.actor("outsider"), PROJECT, "churn-api")


def test_simulation_replays_each_policy_with_bounded_input() -> None:
    done = views_sim.replay("philly", "2x8xP100", ["fifo", "default"], 60)
    assert [r["policy"] for r in done.reports] == ["fifo", "default"]
    assert all(r["jobs"] == 60 for r in done.reports)
    ended = done.curves["fifo"]
    assert ended[-1][1] == 60 and all(a[0] <= b[0] for a, b in itertools.pairwise(ended))
    for args, message in [
        (("/etc/passwd", None, ["fifo"], 10), "trace must be one of"),
        (("philly", "/etc/passwd", ["fifo"], 10), "cluster must be"),
        (("philly", "999x8xA100", ["fifo"], 10), "1 to 256 nodes"),
        (("philly", None, ["nope"], 10), "policies must be"),
        (("philly", None, ["fifo"], 10**6), "jobs must be between"),
        (("philly", None, ["fifo", "las", "default"], 400), "jobs x policies must be at most"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            views_sim.replay(*args)  # type: ignore[arg-type]


def test_one_simulation_at_a_time() -> None:
    with views_sim._busy, pytest.raises(Unavailable, match="already running"):
        views_sim.replay("philly", None, ["fifo"], 10)

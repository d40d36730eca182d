"""Searching runs with filter and order expressions, comparing them, and the runs CLI."""

from __future__ import annotations

import pytest

from tests.cli.test_cli import as_json
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.errors import InvalidInput


@pytest.fixture
def grid(admin: Client) -> dict[tuple[str, int], int]:
    """Six finished runs: lr in 0.1/0.01, depth 1..3; acc = depth/10 + (lr == '0.01')/2."""
    admin.create_project("p")
    ids = {}
    for lr in ("0.1", "0.01"):
        for depth in (1, 2, 3):
            run = admin.create_run("p", "grid", params={"lr": lr, "depth": str(depth)})
            acc = depth / 10 + (0.5 if lr == "0.01" else 0.0)
            body = {
                "batch_id": f"batch-{run.id:08d}",
                "tags": {"kind": "grid"},
                "metrics": {
                    "keys": ["acc", "loss"],
                    "key": [0, 1, 0],
                    "step": [0, 0, 1],
                    "value": [0.0, 1.0, acc],
                    "timestamp": [1, 1, 2],
                },
            }
            admin.log_batch("p", run.id, body)
            admin.end_run("p", run.id)
            ids[(lr, depth)] = run.id
    admin.create_run("p", "other")  # no metrics at all
    return ids


def test_filter_and_order(admin: Client, grid: dict[tuple[str, int], int]) -> None:
    found = admin.list_runs(
        "p", filter="metrics.acc > 0.65 and params.lr = '0.01'", order_by="metrics.acc desc"
    )
    assert [r.id for r in found] == [grid[("0.01", 3)], grid[("0.01", 2)]]
    found = admin.list_runs("p", filter="params.lr = 0.1 or (metrics.acc >= 0.8)")
    assert {r.id for r in found} == {grid[("0.1", d)] for d in (1, 2, 3)} | {grid[("0.01", 3)]}
    ordered = admin.list_runs("p", order_by="metrics.acc asc")
    assert ordered[0].id == grid[("0.1", 1)] and ordered[-1].metrics == {}  # missing: last
    assert len(admin.list_runs("p", filter="status = 'running'")) == 1
    assert len(admin.list_runs("p", filter="attributes.experiment = 'grid'")) == 6
    assert len(admin.list_runs("p", filter="tags.kind like 'gr%'")) == 6
    assert len(admin.list_runs("p", filter="metrics.`loss` = 1")) == 6
    assert len(admin.list_runs("p", filter="started_at > '2000-01-01' and id >= 1")) == 7
    assert admin.list_runs("p", filter="ended_at < '2000-01-01T00:00:00+00:00'") == []


BAD = [
    ("metrics.acc >", ""),
    ("metrics.acc > 'x'", "'x'"),
    ("metrics.acc 0.9", "0.9"),
    ("bogus = 1", "bogus"),
    ("metrics.acc > 0.9 and", ""),
    ("metrics.acc > 0.9; drop table runs", ";"),
    ("(metrics.acc > 0.9", ""),
    ("metrics.acc > 0.9 params.x = 1", "params.x"),
    ("metrics.acc like 1", "like"),
    ("id = 1.5", "1.5"),
    ("id = 99999999999999999999", "99999999999999999999"),
    ("started_at like 'x'", "like"),
    ("started_at > 'yesterday'", "'yesterday'"),
]


def test_bad_expressions_name_the_token(admin: Client, grid: dict[tuple[str, int], int]) -> None:
    for expr, token in BAD:
        with pytest.raises(InvalidInput, match="filter: ") as caught:
            admin.list_runs("p", filter=expr)
        assert caught.value.extra["token"] == token, expr
    with pytest.raises(InvalidInput, match="order_by: 'sideways'"):
        admin.list_runs("p", order_by="metrics.acc sideways")
    assert len(admin.list_runs("p")) == 7  # nothing was dropped


def test_compare(admin: Client, grid: dict[tuple[str, int], int]) -> None:
    a, b = grid[("0.1", 1)], grid[("0.01", 3)]
    result = admin.compare_runs("p", [a, b])
    assert result.runs == [a, b]
    assert result.params == {"depth": ["1", "3"], "lr": ["0.1", "0.01"]}
    assert result.metrics["acc"] == [pytest.approx(0.1), pytest.approx(0.8)]


def test_runs_cli(cli, admin: Client, grid: dict[tuple[str, int], int]) -> None:  # type: ignore[no-untyped-def]
    rows = as_json(
        cli(
            "runs",
            "ls",
            "-p",
            "p",
            "--experiment",
            "grid",
            "--filter",
            "metrics.acc > 0.55",
            "--order-by",
            "metrics.acc desc",
            "--json",
        )
    )
    assert [r["id"] for r in rows] == [grid[("0.01", 3)], grid[("0.01", 2)], grid[("0.01", 1)]]
    run = grid[("0.01", 3)]
    history = as_json(cli("runs", "history", "-p", "p", str(run), "acc", "--json"))
    assert history["step"] == [0, 1] and history["value"] == [0.0, pytest.approx(0.8)]
    shown = as_json(cli("runs", "show", "-p", "p", str(run), "--json"))
    assert shown["params"]["lr"] == "0.01" and shown["artifacts"] == []
    compared = as_json(cli("runs", "compare", "-p", "p", str(run), str(grid[("0.1", 1)]), "--json"))
    assert compared["params"]["depth"] == ["3", "1"]
    assert [e["name"] for e in as_json(cli("experiments", "ls", "-p", "p", "--json"))] == [
        "grid",
        "other",
    ]
    bad = cli("runs", "ls", "-p", "p", "--filter", "metrics.acc >> 1", ok=False)
    assert bad.returncode != 0 and "'>'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    cli("runs", "rm", "-p", "p", str(run), "--yes")
    assert run not in [r["id"] for r in as_json(cli("runs", "ls", "-p", "p", "--json"))]


def test_a_search_reads_one_page_and_counts_every_match(
    server: LiveServer, grid: dict[tuple[str, int], int]
) -> None:
    """What the dashboard's runs list reads: a page by offset, and the total in one COUNT."""
    from underlay.identity import SYSTEM, read_project
    from underlay.ml import runs
    from underlay.store import Scope

    with server.platform.db.session(Scope.everything()) as session:
        project = read_project(session, "p", SYSTEM)
        search = runs.RunSearch(
            filter_expr="attributes.experiment = 'grid'",
            order_by="metrics.acc desc",
            limit=4,
            offset=4,
        )
        page = runs.search_rows(session, project.id, search)
        assert [r["id"] for r in page] == [grid[("0.1", 2)], grid[("0.1", 1)]]
        assert runs.count_runs(session, project.id, search) == 6
        assert runs.count_runs(session, project.id, runs.RunSearch()) == 7

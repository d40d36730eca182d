"""``underlay tables`` and ``underlay sql`` as a user runs them: child processes, live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import Cli, as_json, assert_one_line_error


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only for the CLI: the backends are covered by the API tests."""
    return f"sqlite:///{tmp_path / 'underlay.db'}"


def test_ingest_query_and_inspect(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    orders = tmp_path / "orders.csv"
    good = "".join(f"{i},{i}.5\n" for i in range(3, 40))
    orders.write_text(f"id,amount\n1,9.5\n2,oops\n{good}")
    result = as_json(cli("tables", "ingest", "orders", str(orders), "-p", "shop", "--json"))
    assert (result["version"], result["rows_written"], result["rows_quarantined"]) == (0, 38, 1)
    assert result["quarantine_table"] == "orders_quarantine"
    human = cli("tables", "ingest", "orders", str(orders), "-p", "shop")
    assert human.stdout.strip() == "orders@1: 38 rows written (append), 76 in the table"
    assert "1 rows quarantined in orders_quarantine@1" in human.stderr

    query = "select id, amount from orders@0 where id < 5 order by id"
    rows = cli("sql", query, "-p", "shop").stdout
    assert [json.loads(line) for line in rows.splitlines()] == [
        {"id": 1, "amount": 9.5},
        {"id": 3, "amount": 3.5},
        {"id": 4, "amount": 4.5},
    ]
    info = as_json(cli("tables", "show", "orders", "-p", "shop", "--json"))
    assert [c["name"] for c in info["columns"]] == ["id", "amount"] and info["version"] == 1
    versions = as_json(cli("tables", "versions", "orders", "-p", "shop", "--json"))
    assert [v["version"] for v in versions] == [1, 0]
    head = cli("tables", "head", "orders_quarantine", "-p", "shop", "-n", "1").stdout
    assert json.loads(head)["line"] == 3
    names = [t["name"] for t in as_json(cli("tables", "ls", "-p", "shop", "--json"))]
    assert names == ["orders", "orders_quarantine"]


def test_refusals_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    data = tmp_path / "t.csv"
    data.write_text("id\n1\n")
    cli("tables", "ingest", "t", str(data), "-p", "shop")
    refused = cli("sql", "drop table t", "-p", "shop", ok=False)
    assert_one_line_error(refused, "only SELECT queries are allowed here, not DROP")
    missing = cli("sql", "select * from nope", "-p", "shop", ok=False)
    assert_one_line_error(missing, "table 'nope' not found")
    other = tmp_path / "other.csv"
    other.write_text("id,extra\nx,1\n")
    mismatch = cli("tables", "ingest", "t", str(other), "-p", "shop", ok=False)
    assert_one_line_error(mismatch, "does not match the table's schema")
    unknown = cli("tables", "ingest", "t", str(tmp_path / "t.xlsx"), "-p", "shop", ok=False)
    assert_one_line_error(unknown, "is not a file")

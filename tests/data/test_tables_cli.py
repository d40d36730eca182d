"""``underlay tables`` and ``underlay sql`` as a user runs them: child processes, live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from tests.conftest import sqlite_url


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI: the backends are covered by the API tests."""
    return sqlite_url(sqlite_template, tmp_path)


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


def test_ingest_from_a_database_incrementally(cli: Cli, tmp_path: Path) -> None:
    import sqlite3

    cli("projects", "create", "shop")
    source = tmp_path / "source.db"
    with sqlite3.connect(source) as conn:
        conn.execute("create table orders (id integer primary key, customer_id integer)")
        conn.executemany("insert into orders values (?, ?)", [(1, 7), (2, 8)])
    url = f"sqlite:///{source}"
    load = ("tables", "ingest", "orders", url, "-p", "shop", "--source-table", "orders")
    first = as_json(cli(*load, "--watermark", "id", "--subject-key", "customer_id", "--json"))
    assert (first["version"], first["rows_written"], first["watermark"]["value"]) == (0, 2, 2)
    again = cli(*load, "--watermark", "id")
    assert again.stdout.strip() == "orders: no new rows since orders@0; nothing written"
    with sqlite3.connect(source) as conn:
        conn.execute("insert into orders values (3, 7)")
    assert cli(*load, "--watermark", "id").stdout.startswith("orders@1: 1 rows written (append)")
    versions = cli("tables", "versions", "orders", "-p", "shop").stdout
    assert "id = 3" in versions and "id = 2" in versions
    assert "subject key: customer_id" in cli("tables", "show", "orders", "-p", "shop").stdout

    found = as_json(cli("tables", "subject", "7", "-p", "shop", "--json"))
    (hit,) = found["tables"]
    assert [v["version"] for v in hit["versions"]] == [0, 1]
    human = cli("tables", "subject", "7", "-p", "shop").stdout.splitlines()
    assert human[0] == "orders (key customer_id, stored raw): in the published version 1"
    assert human[1:3] == ["  @0 append: 1 rows", '    {"id": 1, "customer_id": 7}']
    assert cli("tables", "subject", "99", "-p", "shop").stdout.strip() == (
        "no table holds that subject"
    )


def test_database_and_subject_refusals_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    secret = "pw-never-shown-5521"
    table = ("-p", "shop", "--source-table", "x")
    bad = cli("tables", "ingest", "t", f"nosuch://me:{secret}@h/db", *table, ok=False)
    assert_one_line_error(bad, "unknown database kind 'nosuch'")
    down_url = f"postgresql://me:{secret}@127.0.0.1:1/db"
    down = cli("tables", "ingest", "t", down_url, *table, ok=False)
    assert_one_line_error(down, "cannot connect to postgresql+psycopg://me@127.0.0.1:1/db")
    assert secret not in bad.stderr + bad.stdout + down.stderr + down.stdout
    data = tmp_path / "t.csv"
    data.write_text("id,name\n1,a\n")
    key = ("--subject-key", "cid")
    missing = cli("tables", "ingest", "t", str(data), "-p", "shop", *key, ok=False)
    assert_one_line_error(missing, "subject key 'cid' is not a column of the data")
    cli("tables", "ingest", "t", str(data), "-p", "shop")
    refused = cli("tables", "update", "t", "-p", "shop", "--subject-key", "nope", ok=False)
    assert_one_line_error(refused, "subject key 'nope' is not a column of the table")
    neither = cli("tables", "update", "t", "-p", "shop", ok=False)
    assert_one_line_error(neither, "give --subject-key COLUMN or --no-subject-key")
    updated = cli("tables", "update", "t", "-p", "shop", "--subject-key", "id").stdout
    assert updated.strip() == "t: subject key id"
    dropped = cli("tables", "update", "t", "-p", "shop", "--no-subject-key").stdout
    assert dropped.strip() == "t: subject key none"
    flags = cli("tables", "ingest", "t", str(data), "-p", "shop", "--watermark", "id", ok=False)
    assert_one_line_error(flags, "need a database URL")

"""Ingest from databases: a SQLite file and the real PostgreSQL on 127.0.0.1:5432, read by the
SDK (never by the server), with incremental loads by a watermark column."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL
from underlay.errors import InvalidInput, Unavailable

PASSWORD = "s3cret-Pw-7731"


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("shop")
    return "shop"


@pytest.fixture
def shop_db(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    path = tmp_path / "source.db"
    conn = sqlite3.connect(path)
    conn.execute("create table orders (id integer primary key, customer text, total real)")
    conn.executemany(
        "insert into orders values (?, ?, ?)", [(i, f"c{i % 3}", i * 1.5) for i in range(1, 6)]
    )
    conn.commit()
    yield f"sqlite:///{path}", conn
    conn.close()


def test_a_source_is_named_without_credentials() -> None:
    from underlay.data.sqlsource import parse_url, source_key

    url = parse_url(f"postgresql://me:{PASSWORD}@db/shop?sslpassword=x&application_name=etl")
    assert source_key(url, "orders", None) == (
        "postgresql+psycopg://me@db/shop?application_name=etl table=orders"
    )
    assert source_key(url, None, "select 1").startswith("postgresql+psycopg://me@db/shop?")


def test_sqlite_table_loads_then_only_new_rows(
    admin: Any, project: str, shop_db: tuple[str, sqlite3.Connection]
) -> None:
    url, conn = shop_db
    first = admin.ingest_sql(project, "orders", url, table="orders", watermark="id")
    assert (first.version, first.rows_written, first.created) == (0, 5, True)
    assert first.watermark == {
        "source": f"{url} table=orders",
        "column": "id",
        "type": "int",
        "value": 5,
    }
    table = admin.read_table(project, "orders")
    assert table.schema.field("id").type == pa.int32()  # typed from the SQL column
    assert table.schema.field("total").type == pa.float64()

    again = admin.ingest_sql(project, "orders", url, table="orders", watermark="id")
    assert (again.created, again.version, again.rows_written) == (False, 0, 0)
    assert [v.version for v in admin.table_versions(project, "orders")] == [0]

    conn.executemany("insert into orders values (?, ?, ?)", [(6, "c0", 9.0), (7, "c1", 10.5)])
    conn.commit()
    second = admin.ingest_sql(project, "orders", url, table="orders", watermark="id")
    assert (second.version, second.rows_written, second.num_rows) == (1, 2, 7)
    versions = admin.table_versions(project, "orders")
    assert versions[0].watermark["value"] == 7 and versions[1].watermark["value"] == 5
    assert versions[0].source == f"{url} table=orders"
    assert sorted(admin.read_table(project, "orders").column("id").to_pylist()) == list(range(1, 8))


def test_a_query_merges_changed_rows_by_key(
    admin: Any, project: str, shop_db: tuple[str, sqlite3.Connection]
) -> None:
    url, conn = shop_db
    conn.execute("alter table orders add column version integer default 1")
    conn.commit()
    query = "select id, customer, total, version from orders"
    admin.ingest_sql(project, "o", url, query=query, watermark="version", mode="merge", key=["id"])
    conn.execute("update orders set total = 99.5, version = 2 where id = 3")
    conn.commit()
    result = admin.ingest_sql(
        project, "o", url, query=query, watermark="version", mode="merge", key=["id"]
    )
    assert (result.rows_written, result.num_rows, result.watermark["value"]) == (1, 5, 2)
    rows = {r["id"]: r["total"] for r in admin.read_table(project, "o").to_pylist()}
    assert rows[3] == 99.5 and rows[2] == 3.0
    # another query is another source: its own watermark, starting from nothing
    other = admin.ingest_sql(
        project, "o", url, query=query + " where id < 3", watermark="version", mode="merge",
        key=["id"],
    )  # fmt: skip
    assert other.rows_written == 2


def test_bad_sources_are_one_line_errors(
    admin: Any, project: str, shop_db: tuple[str, sqlite3.Connection], tmp_path: Path
) -> None:
    url, conn = shop_db
    with pytest.raises(InvalidInput, match="not a database URL") as bad:
        admin.ingest_sql(project, "t", f"nonsense:{PASSWORD}@", table="x")
    assert PASSWORD not in str(bad.value)
    with pytest.raises(InvalidInput, match="unknown database kind 'nosuchdb'"):
        admin.ingest_sql(project, "t", f"nosuchdb://u:{PASSWORD}@h/db", table="x")
    with pytest.raises(InvalidInput, match="the driver for 'mysql' is not installed"):
        admin.ingest_sql(project, "t", f"mysql://u:{PASSWORD}@h/db", table="x")
    with pytest.raises(InvalidInput, match='the database refused the query: near "selec"'):
        admin.ingest_sql(project, "t", url, query="selec 1")
    with pytest.raises(InvalidInput, match="the database has no table 'nope'"):
        admin.ingest_sql(project, "t", url, table="nope")
    with pytest.raises(InvalidInput, match="watermark column 'nope' is not in table 'orders'"):
        admin.ingest_sql(project, "t", url, table="orders", watermark="nope")
    with pytest.raises(InvalidInput, match="appends or merges"):
        admin.ingest_sql(project, "t", url, table="orders", watermark="id", mode="overwrite")
    conn.execute("create table odd (id integer, at time)")
    conn.execute("insert into odd values (1, '10:00')")
    conn.commit()
    with pytest.raises(InvalidInput, match="column 'at' is TIME, which a table cannot hold"):
        admin.ingest_sql(project, "t", url, table="odd")
    with pytest.raises(InvalidInput, match="column 'total' does not read as int64"):
        mixed = "select id, case when id < 2 then id else id + 0.5 end as total from orders"
        admin.ingest_sql(project, "t", url, query=mixed + " order by id")
    writes = len(admin.list_audit(action="table.write", limit=1000))
    with pytest.raises(InvalidInput, match="column 'total' does not read as int64"):
        # the third batch breaks off an upload that has started: no table is left behind
        mixed = "select id, case when id < 5 then id else id + 0.5 end as total from orders"
        admin.ingest_sql(project, "t", url, query=mixed + " order by id", batch_rows=2)
    # the server cleans up once it sees the upload break off, then audits the refusal
    deadline = time.monotonic() + 60
    while len(admin.list_audit(action="table.write", limit=1000)) == writes:
        assert time.monotonic() < deadline, "the broken-off write was never audited"
        time.sleep(0.1)
    (refused,) = admin.list_audit(action="table.write", limit=1)
    assert refused.outcome != "ok" and "broke off" in str(refused.detail)
    assert admin.list_tables(project) == []


def test_the_server_refuses_a_source_or_watermark_with_a_password(
    server: Any, admin: Any, project: str
) -> None:
    source = f"postgresql://u:{PASSWORD}@h/db table=t"
    mark = {"source": source, "column": "id", "type": "int", "value": 1}
    for params in ({"watermark": json.dumps(mark)}, {"source": source}):
        r = httpx.put(
            f"{server.url}/api/v1/projects/{project}/tables/t/data",
            params={"format": "arrow", **params},
            content=b"",
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert r.status_code == 400 and "must not hold a password" in r.text
        assert PASSWORD not in r.text
    bad = {**mark, "source": "sqlite:///x.db table=t", "value": "later"}
    r = httpx.put(
        f"{server.url}/api/v1/projects/{project}/tables/t/data",
        params={"format": "arrow", "watermark": json.dumps(bad)},
        content=b"",
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert r.status_code == 400 and "the watermark value is not a int" in r.text
    assert admin.list_tables(project) == []


# -- the real PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def pg_source() -> Iterator[tuple[str, Any]]:
    """A scratch schema in database ``test`` (dropped after), and a URL with a password that
    trust authentication ignores."""
    schema = f"underlay_src_{secrets.token_hex(4)}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0] + "/test"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = base.replace("postgres@", f"postgres:{PASSWORD}@", 1)
        yield url, (engine, schema)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.postgres
def test_postgres_typed_incremental_loads_never_show_the_password(
    admin: Any, project: str, pg_source: tuple[str, Any]
) -> None:
    url, (engine, schema) = pg_source
    assert PASSWORD in url
    with engine.connect() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{schema}".orders (id bigint primary key, customer_id integer, '
                "qty smallint, "
                "amount numeric(10,2), placed_at timestamptz, note text, tags jsonb, "
                "ref uuid, paid boolean, day date)"
            )
        )
        conn.execute(
            text(
                f'INSERT INTO "{schema}".orders SELECT g, g % 7, 1, g * 1.25, '
                "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', 'n' || g, "
                "jsonb_build_object('g', g), gen_random_uuid(), g % 2 = 0, "
                "date '2024-01-01' + g FROM generate_series(1, 2500) g"
            )
        )
        # no watermark: an incremental load leaves it out
        conn.execute(text(f'INSERT INTO "{schema}".orders (id, customer_id) VALUES (5000, 1)'))
    source = f"{schema}.orders"
    first = admin.ingest_sql(
        project, "orders", url, table=source, watermark="placed_at", batch_rows=1000
    )
    assert (first.rows_written, first.watermark["type"]) == (2500, "timestamp")
    assert first.watermark["value"] == "2024-04-14T04:00:00+00:00"
    table = admin.read_table(project, "orders", limit=1)
    types = {f.name: f.type for f in table.schema}
    assert types["id"] == pa.int64() and types["customer_id"] == pa.int32()
    assert types["amount"] == pa.decimal128(10, 2)
    assert types["placed_at"] == pa.timestamp("us", tz="UTC") and types["day"] == pa.date32()
    assert types["paid"] == pa.bool_() and types["tags"] == pa.string()
    assert types["ref"] == pa.string() and types["qty"] == pa.int16()
    row = admin.sql(project, "select * from orders where id = 4").to_pylist()[0]
    assert row["amount"] == Decimal("5.00") and json.loads(row["tags"]) == {"g": 4}

    with engine.connect() as conn:
        conn.execute(
            text(
                f'INSERT INTO "{schema}".orders (id, customer_id, placed_at) VALUES '
                "(9001, 1, timestamptz '2030-01-01 00:00:00+00')"
            )
        )
    second = admin.ingest_sql(project, "orders", url, table=source, watermark="placed_at")
    assert (second.version, second.rows_written, second.num_rows) == (1, 1, 2501)
    third = admin.ingest_sql(project, "orders", url, table=source, watermark="placed_at")
    assert third.created is False

    stored = json.dumps(
        [v.model_dump(mode="json") for v in admin.table_versions(project, "orders")]
    )
    audit = json.dumps([e.model_dump(mode="json") for e in admin.list_audit()])
    assert "postgres@127.0.0.1:5432/test" in stored  # the source, named without its password
    assert PASSWORD not in stored and PASSWORD not in audit


@pytest.mark.postgres
def test_postgres_query_and_refusals(admin: Any, project: str, pg_source: tuple[str, Any]) -> None:
    url, (engine, schema) = pg_source
    with engine.connect() as conn:
        conn.execute(text(f'CREATE TABLE "{schema}".t (id int, span interval, seen date)'))
        conn.execute(text(f"INSERT INTO \"{schema}\".t VALUES (1, '1 day', '2024-02-01')"))
    with pytest.raises(InvalidInput, match="column 'span' is INTERVAL"):
        admin.ingest_sql(project, "t", url, table=f"{schema}.t")
    query = f'SELECT id, seen, span::text AS span FROM "{schema}".t'
    result = admin.ingest_sql(project, "t", url, query=query, watermark="seen")
    assert result.watermark["type"] == "date" and result.watermark["value"] == "2024-02-01"
    assert admin.read_table(project, "t").to_pylist() == [
        {"id": 1, "seen": dt.date(2024, 2, 1), "span": "1 day"}
    ]
    with engine.connect() as conn:
        conn.execute(
            text(
                f'CREATE FUNCTION "{schema}".sneaky() RETURNS bigint LANGUAGE sql AS '
                f'$$ DELETE FROM "{schema}".t; SELECT 1::bigint $$'
            )
        )
    sneaky = f'SELECT "{schema}".sneaky() AS n'
    assert admin.ingest_sql(project, "sneaky", url, query=sneaky).rows_written == 1
    with engine.connect() as conn:  # the reading transaction was rolled back
        assert conn.execute(text(f'SELECT count(*) FROM "{schema}".t')).scalar() == 1
    with pytest.raises(InvalidInput, match="the database refused the query") as refused:
        admin.ingest_sql(project, "t", url, query=f'SELECT nope FROM "{schema}".t')
    assert PASSWORD not in str(refused.value)
    wrong = url.replace(":5432/", ":1/")
    with pytest.raises(Unavailable, match="cannot connect to postgresql") as down:
        admin.ingest_sql(project, "t", wrong, table="t")
    assert PASSWORD not in str(down.value)

"""The SQL sandbox of underlay.data.sql: one DuckDB database per process, a cursor per query.

These run the module directly on real Arrow datasets (the HTTP path is in test_tables.py):
what one query is handed stays its own, the locked configuration holds on every cursor, the
timeout interrupts one query without harming the database, and the memory limit is shared."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from underlay.config import DataSettings
from underlay.data import sql
from underlay.errors import InvalidInput, NotFound


def _resolver(tables: dict[str, pa.Table]) -> sql.Resolve:
    def resolve(name: str, version: int | None) -> pads.Dataset:
        if name not in tables:
            raise NotFound(f"table {name!r} not found")
        return pads.dataset(tables[name])

    return resolve


def _rows(result: sql.Result) -> list[dict[str, Any]]:
    return pa.Table.from_batches(list(result.batches), schema=result.schema).to_pylist()


@pytest.fixture
def settings() -> Iterator[DataSettings]:
    yield DataSettings(sql_memory_limit="256MB", sql_threads=1)


def test_queries_share_one_database_but_not_their_tables(settings: DataSettings) -> None:
    mine = _resolver({"t": pa.table({"v": [1, 2, 3]}), "secrets": pa.table({"s": ["x"]})})
    theirs = _resolver({"t": pa.table({"v": [9]})})
    first = sql.run("select v from t order by v", mine, settings)
    second_secret = sql.run("select s from secrets", mine, settings)
    # while both are open, the same name on another query is another table
    assert _rows(sql.run("select v from t", theirs, settings)) == [{"v": 9}]
    with pytest.raises(NotFound, match="secrets"):
        sql.run("select s from secrets", theirs, settings)
    assert _rows(first) == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert _rows(second_secret) == [{"s": "x"}]
    assert sql.sandbox(settings) is not sql.sandbox(settings)
    assert sql._database(settings) is sql._database(settings)


def test_a_cursor_sees_nothing_registered_on_another(settings: DataSettings) -> None:
    one, other = sql.sandbox(settings), sql.sandbox(settings)
    try:
        one.register("hidden", pa.table({"v": [1]}))
        assert one.sql("select v from hidden").fetchall() == [(1,)]
        for query in (
            "select * from hidden",
            "select * from temp.main.hidden",
            "select * from memory.main.hidden",
        ):
            with pytest.raises(duckdb.CatalogException):
                other.sql(query).fetchall()
        names = other.sql("select table_name from information_schema.tables").fetchall()
        assert ("hidden",) not in names
    finally:
        one.close()
        other.close()


@pytest.mark.parametrize(
    "statement",
    [
        "SET enable_external_access = true",
        "SET memory_limit = '64GB'",
        "SET threads = 32",
        "SET autoload_known_extensions = true",
        "RESET lock_configuration",
        "SET lock_configuration = false",
    ],
)
def test_no_cursor_can_change_the_configuration(settings: DataSettings, statement: str) -> None:
    cursor = sql.sandbox(settings)
    try:
        with pytest.raises(duckdb.Error, match="configuration"):
            cursor.execute(statement)
        with pytest.raises(duckdb.Error, match="disabled"):
            cursor.sql("select * from read_csv('/etc/passwd')").fetchall()
        limit = cursor.sql("select current_setting('memory_limit')").fetchall()
        assert limit == [("244.1 MiB",)]  # 256 MB
    finally:
        cursor.close()
    with pytest.raises(InvalidInput, match="only SELECT"):
        sql.run(statement, _resolver({}), settings)


def test_the_timeout_interrupts_one_query_and_the_database_lives_on() -> None:
    settings = DataSettings(sql_timeout_s=0.3, sql_threads=1)
    endless = "select count(*) from range(1000000000) a, range(1000000000) b"
    start = time.monotonic()
    with pytest.raises(InvalidInput, match="the query failed: INTERRUPT"):
        _rows(sql.run(endless, _resolver({}), settings))
    assert time.monotonic() - start < 10
    assert _rows(sql.run("select 1 as one", _resolver({}), settings)) == [{"one": 1}]


def test_the_memory_limit_caps_all_queries_of_a_process_together() -> None:
    """Each query alone fits in the limit; a second one while the first holds its result
    does not (a list aggregate cannot spill)."""
    settings = DataSettings(sql_memory_limit="64MB", sql_threads=1)
    build = "select list(random()) as l from range(1500000)"  # about 34 MB held
    use = f"select len(l) as n from ({build})"
    assert _rows(sql.run(use, _resolver({}), settings)) == [{"n": 1500000}]
    held = sql.run(build, _resolver({}), settings)  # started, its result not yet read
    with pytest.raises(InvalidInput, match="Out of Memory"):
        _rows(sql.run(use, _resolver({}), settings))
    held.batches.close()  # done with it: its memory is free again
    assert _rows(sql.run(use, _resolver({}), settings)) == [{"n": 1500000}]


def test_a_forked_process_gets_a_database_of_its_own(settings: DataSettings) -> None:
    import multiprocessing

    parent = sql._database(settings)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_one_query, (settings,)) == [(1,)]
    assert sql._database(settings) is parent


def _one_query(settings: DataSettings) -> list[tuple[Any, ...]]:
    cursor = sql.sandbox(settings)
    try:
        return cursor.sql("select 1").fetchall()
    finally:
        cursor.close()

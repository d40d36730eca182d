"""SQL over a project's tables: DuckDB, sandboxed, one ``SELECT`` at a time, streamed.

Each query gets a fresh connection (a cursor) to one in-memory DuckDB database per process,
made once, that can reach nothing but what is handed to it: external access is off (no files,
no URLs, no ``ATTACH``, no ``COPY``), extensions cannot be installed or loaded, and the
configuration is locked so no query can turn any of that back on. What a query is handed is
registered on its own cursor, which no other cursor sees. The tables the query names are
handed over as lazy Arrow datasets of the caller's project only (at their published version,
or ``name@3`` for version 3), so a name of another project's table is simply unknown.
Statements other than one ``SELECT`` are refused before DuckDB runs anything. Memory, threads
and run time are bounded by settings; the memory limit is the database's, so it caps all
queries of one process together. (Opening a database costs 10-40 ms, a cursor microseconds:
that was most of a short query's time.)
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as pads

from underlay.config import DataSettings
from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import duckdb

Resolve = Callable[[str, int | None], pads.Dataset]
"""(table name, version or None) -> the dataset; raises NotFound for an unknown table."""

_REF = re.compile(r"(?<![\w.])([a-z][a-z0-9_-]*)@([0-9]{1,9})\b")
_TABLE = re.compile(r"^([a-z][a-z0-9_-]*)(?:@([0-9]{1,9}))?$")
MAX_QUERY = 100_000


@dataclass
class Result:
    """A running query: its schema, then its batches (one pass)."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    tables: list[str]


def rewrite(query: str) -> str:
    """``sales@3`` written bare becomes the identifier ``"sales@3"``; text inside quotes
    (strings and quoted identifiers) is left as it is."""
    out: list[str] = []
    i = 0
    while i < len(query):
        ch = query[i]
        if ch in "'\"":
            end = i + 1
            while end < len(query):
                if query[end] == ch:
                    if end + 1 < len(query) and query[end + 1] == ch:  # doubled quote
                        end += 2
                        continue
                    break
                end += 1
            out.append(query[i : end + 1])
            i = end + 1
            continue
        end = i
        while end < len(query) and query[end] not in "'\"":
            end += 1
        out.append(_REF.sub(r'"\1@\2"', query[i:end]))
        i = end
    return "".join(out)


def parse_select(query: str) -> tuple[str, list[str]]:
    """``query`` checked to be one ``SELECT`` naming tables by bare name only: the rewritten
    text (``name@3`` quoted) and the table names it reads."""
    import duckdb

    if not query.strip():
        raise InvalidInput("the query is empty")
    if len(query) > MAX_QUERY:
        raise InvalidInput(f"the query is longer than {MAX_QUERY} characters")
    sql = rewrite(query)
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise InvalidInput(f"the query does not parse: {_first_line(error)}") from None
    if len(statements) != 1:
        raise InvalidInput(f"give one statement, not {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        kind = str(statements[0].type).rsplit(".", 1)[-1]
        raise InvalidInput(f"only SELECT queries are allowed here, not {kind}")
    try:
        qualified = duckdb.get_table_names(sql, qualified=True)
        names = sorted(duckdb.get_table_names(sql))
    except duckdb.Error as error:
        raise InvalidInput(f"the query does not parse: {_first_line(error)}") from None
    for name in qualified:
        if not (name.startswith('"') and name.endswith('"')) and "." in name:
            raise InvalidInput(
                f"{name} names a schema or catalog: tables here are named by their name only "
                "(and only the project's own)"
            )
    return sql, names


_databases: dict[tuple[int, str, int], duckdb.DuckDBPyConnection] = {}
_databases_lock = threading.Lock()


def _database(settings: DataSettings) -> duckdb.DuckDBPyConnection:
    """The process's sandboxed in-memory database for these limits, made on first use (and
    anew in a forked child: a DuckDB database does not survive ``fork``)."""
    import duckdb

    key = (os.getpid(), settings.sql_memory_limit, settings.sql_threads)
    with _databases_lock:
        database = _databases.get(key)
        if database is None:
            database = duckdb.connect(
                ":memory:",
                config={
                    "enable_external_access": False,
                    "autoinstall_known_extensions": False,
                    "autoload_known_extensions": False,
                    "allow_community_extensions": False,
                    "memory_limit": settings.sql_memory_limit,
                    "threads": settings.sql_threads,
                    "lock_configuration": True,
                },
            )
            _databases[key] = database
        return database


def sandbox(settings: DataSettings) -> duckdb.DuckDBPyConnection:
    """A fresh connection to the process's sandboxed DuckDB (see the module docstring): what
    is registered on it is its own; ``close()`` it when done."""
    return _database(settings).cursor()


def run(query: str, resolve: Resolve, settings: DataSettings, batch_rows: int = 8192) -> Result:
    """Start ``query``; see the module docstring for what is refused."""
    import duckdb

    sql, names = parse_select(query)
    con = sandbox(settings)
    try:
        for name in names:
            match = _TABLE.fullmatch(name)
            if match is None:
                raise InvalidInput(f"{name!r} names no table of this project")
            version = int(match.group(2)) if match.group(2) else None
            con.register(name, resolve(match.group(1), version))
        timer = threading.Timer(settings.sql_timeout_s, con.interrupt)
        timer.daemon = True
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(batch_rows)
        except duckdb.Error as error:
            timer.cancel()
            raise InvalidInput(f"the query failed: {_first_line(error)}") from None
    except BaseException:
        con.close()
        raise

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except (duckdb.Error, pa.ArrowException) as error:
            raise InvalidInput(f"the query failed: {_first_line(error)}") from None
        finally:
            timer.cancel()
            con.close()

    return Result(reader.schema, batches(), names)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

"""Reading a table or a query of any database SQLAlchemy speaks into Arrow batches, on the
client side, in bounded memory, for incremental loads by a watermark column.

The CLI or SDK opens the URL, never the server: the server would otherwise connect wherever
a user pointed it (server-side request forgery) and hold the user's credentials. Rows stream
through a server-side cursor (``stream_results`` with ``yield_per``) a batch at a time, are
typed from the SQL column types (reflected, for a table) or from the first batch's values
(for a query), and are uploaded through the ordinary streaming table write.

A **source** is named by its URL with the password (and any query parameter that looks like
a credential) removed, plus the table or a digest of the query: the name under which the
server keeps a load's watermark. Messages from the driver are scrubbed of the password
before they reach the user, so no credential appears in output, errors, audit or metadata.

The transaction that reads is rolled back at the end, never committed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from underlay.errors import InvalidInput, Unavailable, UnderlayError

SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "token", "key", "credential")
DECIMAL = pa.decimal128(38, 10)  # a NUMERIC without precision


def parse_url(url: str) -> Any:
    """``url`` as a SQLAlchemy URL; a one-line error that never repeats a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidInput(
            "the source is not a database URL (write DIALECT[+DRIVER]://USER@HOST/DB, "
            "e.g. postgresql://me@db.example.com/shop or sqlite:///shop.db)"
        ) from None
    if parsed.drivername == "postgresql" and not _importable("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver installed with us
    return parsed


def redact(url: Any) -> str:
    """The URL as text with its password and credential-like query parameters removed."""
    query = {k: v for k, v in url.query.items() if not _secret(k)}
    clean = url._replace(password=None, query=query)  # set() takes None as "unchanged"
    text: str = clean.render_as_string(hide_password=False)
    return text


def source_key(url: Any, table: str | None, query: str | None) -> str:
    """The name a load's watermark is kept under: the redacted URL and the table or query."""
    if table is not None:
        return f"{redact(url)} table={table}"
    digest = hashlib.sha256((query or "").encode()).hexdigest()[:16]
    return f"{redact(url)} query=sha256:{digest}"


def check_no_password(text: str) -> None:
    """Refuse a source name that holds a credential (the server's last line of defence)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text.split(" ", 1)[0])
    except (ArgumentError, ValueError):
        return
    if url.password is not None or any(_secret(k) for k in url.query):
        raise InvalidInput("a table source must not hold a password: remove it")


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_PARAMS)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- watermarks ------------------------------------------------------------------------------


def encode_value(value: Any) -> tuple[str, Any]:
    """A watermark value as (type, JSON value)."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, decimal.Decimal):
        return "decimal", str(value)
    if isinstance(value, dt.datetime):
        return "timestamp", value.isoformat()
    if isinstance(value, dt.date):
        return "date", value.isoformat()
    if isinstance(value, str):
        return "string", value
    raise InvalidInput(f"a watermark column cannot be {type(value).__name__}")


def decode_value(kind: str, value: Any) -> Any:
    """The Python value a recorded watermark compares as."""
    decoders: dict[str, Callable[[Any], Any]] = {
        "bool": bool,
        "int": int,
        "float": float,
        "decimal": decimal.Decimal,
        "timestamp": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "string": str,
    }
    if kind not in decoders:
        raise InvalidInput(f"the recorded watermark has an unknown type {kind!r}")
    try:
        return decoders[kind](value)
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation):
        raise InvalidInput(f"the watermark value is not a {kind}") from None


# -- types -----------------------------------------------------------------------------------

Convert = Callable[[Any], Any] | None


def arrow_type(name: str, sql_type: Any) -> tuple[pa.DataType, Convert]:
    """The Arrow type of a SQL column (and how to convert its values), or a clear error."""
    from sqlalchemy import types as t

    if isinstance(sql_type, t.Boolean):
        return pa.bool_(), None
    if isinstance(sql_type, t.SmallInteger):
        return pa.int16(), None
    if isinstance(sql_type, t.BigInteger):
        return pa.int64(), None
    if isinstance(sql_type, t.Integer):
        return pa.int32(), None
    if isinstance(sql_type, t.Float):
        return pa.float64(), None
    if isinstance(sql_type, t.Numeric):
        precision, scale = sql_type.precision, sql_type.scale
        if precision is not None and precision <= 38:
            return pa.decimal128(precision, scale or 0), None
        return DECIMAL, None
    if isinstance(sql_type, t.DateTime):
        return (pa.timestamp("us", tz="UTC") if sql_type.timezone else pa.timestamp("us")), None
    if isinstance(sql_type, t.Date):
        return pa.date32(), None
    if isinstance(sql_type, t.Uuid):
        return pa.string(), _text
    if isinstance(sql_type, t.JSON):
        return pa.string(), _json
    if isinstance(sql_type, (t.String, t.Enum)):
        return pa.string(), None
    if isinstance(sql_type, t.LargeBinary):
        return pa.binary(), _bytes
    raise InvalidInput(_unmappable(name, str(sql_type) if sql_type is not None else "unknown"))


def _unmappable(name: str, kind: str) -> str:
    return (
        f"column {name!r} is {kind}, which a table cannot hold: cast it in --query "
        f'(e.g. SELECT CAST("{name}" AS TEXT) AS "{name}" …) or leave it out'
    )


def value_type(name: str, value: Any) -> tuple[pa.DataType, Convert]:
    """The Arrow type of a query column, from its first non-null value."""
    if value is None:
        return pa.string(), None
    if isinstance(value, bool):
        return pa.bool_(), None
    if isinstance(value, int):
        return pa.int64(), None
    if isinstance(value, float):
        return pa.float64(), None
    if isinstance(value, decimal.Decimal):
        return DECIMAL, None
    if isinstance(value, dt.datetime):
        return (pa.timestamp("us", tz="UTC") if value.tzinfo else pa.timestamp("us")), None
    if isinstance(value, dt.date):
        return pa.date32(), None
    if isinstance(value, str):
        return pa.string(), None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return pa.binary(), _bytes
    if isinstance(value, uuid.UUID):
        return pa.string(), _text
    if isinstance(value, (dict, list)):
        return pa.string(), _json
    raise InvalidInput(_unmappable(name, type(value).__name__))


def _text(value: Any) -> Any:
    return None if value is None else str(value)


def _json(value: Any) -> Any:
    return None if value is None or isinstance(value, str) else json.dumps(value)


def _bytes(value: Any) -> Any:
    return None if value is None else bytes(value)


# -- reading ---------------------------------------------------------------------------------


@dataclass
class SqlRead:
    """A source ready to stream: its schema, its batches (one pass), and with a watermark
    the highest value the load takes (rows above it are left for the next load)."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    source: str
    watermark: str | None = None
    highest: Any = None


def open_sql(
    url: str,
    *,
    table: str | None = None,
    query: str | None = None,
    watermark: str | None = None,
    after: Any = None,
    batch_rows: int = 50_000,
) -> SqlRead | None:
    """Stream ``table`` (``schema.table`` allowed) or ``query`` from the database at
    ``url``. With ``watermark``, the load takes the rows whose watermark is above ``after``
    (all, when None) and at most the highest value found first, so rows that arrive while
    it runs are left whole to the next load. None when there is no row to load."""
    if (table is None) == (query is None):
        raise InvalidInput("give a source table or a query (one of them)")
    parsed = parse_url(url)
    scrub = _Scrubber(parsed)
    source = source_key(parsed, table, query)
    engine, conn = scrub.connect()
    try:
        plan = scrub.guard(lambda: _plan(conn, table, query, watermark, after))
        if plan is None:
            raise _Empty
        statement, types, highest = plan
        result = scrub.guard(
            lambda: conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                statement
            )
        )
        names = list(result.keys())
        parts = scrub.iterate(result.partitions())
        first = next(parts, None)
        if first is None:
            raise _Empty
    except BaseException as error:
        conn.close()
        engine.dispose()
        if isinstance(error, _Empty):
            return None
        raise
    if types is None:
        types = [_first_type(n, i, first) for i, n in enumerate(names)]
    schema = pa.schema([(n, kind) for n, (kind, _) in zip(names, types, strict=True)])
    converts = [conv for _, conv in types]

    try:  # the first batch is read before any upload starts: most type errors show here
        head = _batch(first, schema, converts)
    except BaseException:
        conn.close()
        engine.dispose()
        raise

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield head
            for rows in parts:
                yield _batch(rows, schema, converts)
        finally:
            conn.close()
            engine.dispose()

    return SqlRead(schema, batches(), source, watermark, highest)


class _Empty(Exception):
    """Nothing to load."""


def _first_type(name: str, index: int, rows: list[Any]) -> tuple[pa.DataType, Convert]:
    return value_type(name, next((r[index] for r in rows if r[index] is not None), None))


def _batch(rows: list[Any], schema: pa.Schema, converts: list[Convert]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    arrays = []
    for target, values, convert in zip(schema, columns, converts, strict=True):
        data = [convert(v) for v in values] if convert is not None else list(values)
        try:  # inferred, then a safe cast: pa.array(data, int64) would truncate 10.5 to 10
            arrays.append(pa.array(data).cast(target.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(
                f"column {target.name!r} does not read as {target.type}: "
                f"{str(exc).splitlines()[0][:200]} (cast it in the query)"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


Plan = tuple[Any, list[tuple[pa.DataType, Convert]] | None, Any]


def _plan(
    conn: Any, table: str | None, query: str | None, watermark: str | None, after: Any
) -> Plan | None:
    """The SELECT to run, the Arrow types of a table's columns (None for a query: from the
    values), and the highest watermark it loads; None when no row is above ``after``."""
    from sqlalchemy import column, func, literal_column, select, text

    types = None
    if table is not None:
        source = _reflect(conn, table)
        types = [arrow_type(c.name, c.type) for c in source.columns]
        names = [c.name for c in source.columns]
        if watermark is None:
            return select(source), types, None
        if watermark not in names:
            raise InvalidInput(
                f"watermark column {watermark!r} is not in table {table!r} "
                f"(its columns: {', '.join(names)})"
            )
        base, mark = select(source), source.c[watermark]
        top = select(func.max(mark))
    else:
        assert query is not None
        if watermark is None:
            return text(query), None, None
        inner = text(query).columns().subquery("underlay_source")
        base, mark = select(literal_column("*")).select_from(inner), column(watermark)
        top = select(func.max(mark)).select_from(inner)
    if after is not None:
        top = top.where(mark > after)
    highest = conn.execute(top).scalar()
    if highest is None:
        return None
    statement = base.where(mark <= highest)
    if after is not None:
        statement = statement.where(mark > after)
    return statement, types, highest


def _reflect(conn: Any, name: str) -> Any:
    from sqlalchemy import MetaData, Table
    from sqlalchemy.exc import NoSuchTableError, SAWarning

    schema, _, table = name.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # a type it does not know: refused below
        try:
            return Table(table, MetaData(), schema=schema or None, autoload_with=conn)
        except NoSuchTableError:
            raise InvalidInput(f"the database has no table {name!r}") from None


class _Scrubber:
    """Runs database calls, turning their errors into one line with no password in it."""

    def __init__(self, url: Any) -> None:
        self.url = url
        self.shown = redact(url)
        self.secrets = [s for s in (url.password, *url.query.values()) if s]

    def clean(self, message: str) -> str:
        for secret in self.secrets:
            for text in secret if isinstance(secret, tuple) else (secret,):
                if text:
                    message = message.replace(str(text), "***")
        return message

    def fail(self, error: BaseException, phase: str) -> UnderlayError:
        from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError

        first = str(getattr(error, "orig", None) or error).strip().splitlines() or [""]
        line = self.clean(first[0])[:300]
        if isinstance(error, NoSuchModuleError):
            return InvalidInput(
                f"unknown database kind {self.url.drivername!r}: write e.g. postgresql://, "
                "mysql+pymysql:// or sqlite:///"
            )
        if isinstance(error, ModuleNotFoundError):
            return InvalidInput(
                f"the driver for {self.url.drivername!r} is not installed "
                f"({self.clean(str(error))}): pip install it"
            )
        if phase == "connect" and isinstance(error, (OperationalError, DBAPIError)):
            return Unavailable(f"cannot connect to {self.shown}: {line}")
        if isinstance(error, DBAPIError):
            return InvalidInput(f"the database refused the query: {line}")
        return InvalidInput(f"cannot read from {self.shown}: {line}")

    def connect(self) -> tuple[Any, Any]:
        from sqlalchemy import create_engine

        def open_() -> tuple[Any, Any]:
            engine = create_engine(self.url)
            try:
                return engine, engine.connect()
            except BaseException:
                engine.dispose()
                raise

        result: tuple[Any, Any] = self.guard(open_, "connect")
        return result

    def guard(self, call: Callable[[], Any], phase: str = "query") -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return call()
        except UnderlayError:
            raise
        except (SQLAlchemyError, ModuleNotFoundError, ImportError) as error:
            raise self.fail(error, phase) from None

    def iterate(self, parts: Iterator[Any]) -> Iterator[Any]:
        while True:
            part = self.guard(lambda: next(parts, None))
            if part is None:
                return
            yield part


def check_watermark(text: str) -> str:
    """A watermark as the server keeps it: JSON ``{source, column, type, value}`` whose
    source holds no credential; the normalised JSON, or :class:`InvalidInput`."""
    try:
        found = json.loads(text)
    except ValueError:  # JSONDecodeError, or a number too long
        raise InvalidInput("the watermark is not JSON") from None
    fields = {"source", "column", "type", "value"}
    if not isinstance(found, dict) or set(found) != fields:
        raise InvalidInput("the watermark must be a JSON object of source, column, type, value")
    if not all(isinstance(found[k], str) for k in ("source", "column", "type")):
        raise InvalidInput("the watermark's source, column and type must be text")
    check_no_password(found["source"])
    decode_value(found["type"], found["value"])
    return json.dumps(found, sort_keys=True)

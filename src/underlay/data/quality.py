"""Quality gates: declarative checks on a table, evaluated on every new version before it is
published.

A table holds a :class:`CheckSpec`, a list of checks, each with a ``type``, its column(s),
``blocking`` (true by default; false makes it warn-only) and an optional ``name``. The types:

* ``schema`` — the named columns exist with the given Arrow types (``exact``: and no others);
* ``not_null``, ``unique`` (the columns together; rows with a null key are not compared);
* ``range`` (``min`` and/or ``max``, inclusive), ``allowed`` (``values``), ``regex``
  (``pattern`` found in the value; anchor it with ``^…$`` for the whole value) — nulls pass
  these, so combine with ``not_null``;
* ``row_count`` (``min`` and/or ``max`` rows), ``freshness`` (the newest value of a date or
  timestamp column is at most ``max_age`` old: ``90s``, ``30m``, ``24h``, ``7d``);
* ``sql`` — a ``SELECT`` over the table (by its name, and no other table) returning the
  failing rows.

Evaluation is DuckDB SQL over the version's lazy Arrow dataset in the same sandbox as the
project's SQL (:mod:`underlay.data.sql`): the row checks are one aggregate scan; ``unique``
and ``sql`` checks run a query each; a sample of failing rows is fetched only for checks that
failed. A check that cannot be evaluated (a column gone after schema evolution, a query that
fails) fails with the reason, never with a platform error.

Why not pandera: its ibis backend would run on DuckDB, but it imports pandas and numpy even
there (neither is a dependency of the platform) and runs a query per check; the checks here
are a few SQL predicates, so DuckDB evaluates them directly, in one scan.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from underlay.errors import InvalidInput

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as pads

    from underlay.config import DataSettings

SAMPLE_ROWS = 5
MAX_CELL = 200  # characters of a sampled text value
MAX_SAMPLE_COLUMNS = 32
Scalar = int | float | str
ColumnName = Annotated[str, Field(min_length=1, max_length=255)]


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:,-]{1,80}$", description="Defaults to TYPE:COLUMNS."
    )
    blocking: bool = Field(
        default=True, description="A failing blocking check keeps the version unpublished."
    )

    def column_names(self) -> list[str]:
        return []

    def label(self) -> str:
        columns = self.column_names()
        kind = str(getattr(self, "type", ""))
        return self.name or (f"{kind}:{','.join(columns)}" if columns else kind)


class _ColumnsCheck(_Check):
    columns: list[ColumnName] = Field(min_length=1, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _one_column(cls, data: Any) -> Any:
        if isinstance(data, dict) and "column" in data and "columns" not in data:
            data = {**data, "columns": [data["column"]]}
            del data["column"]
        return data

    def column_names(self) -> list[str]:
        return list(self.columns)


class _ColumnCheck(_Check):
    column: ColumnName

    def column_names(self) -> list[str]:
        return [self.column]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


class SchemaCheck(_Check):
    type: Literal["schema"]
    columns: dict[ColumnName, Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=1000, description="Column name -> Arrow type (int64, string…)."
    )
    exact: bool = Field(default=False, description="No other columns either.")

    def column_names(self) -> list[str]:
        return list(self.columns)


class NotNullCheck(_ColumnsCheck):
    type: Literal["not_null"]


class UniqueCheck(_ColumnsCheck):
    type: Literal["unique"]


class RangeCheck(_ColumnCheck):
    type: Literal["range"]
    min: Scalar | None = None
    max: Scalar | None = None

    @model_validator(mode="before")
    @classmethod
    def _dates(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: _iso(v) if k in ("min", "max") else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> RangeCheck:
        if self.min is None and self.max is None:
            raise ValueError("a range check needs min, max or both")
        return self


class AllowedCheck(_ColumnCheck):
    type: Literal["allowed"]
    values: list[bool | int | float | str] = Field(min_length=1, max_length=10_000)


class RegexCheck(_ColumnCheck):
    type: Literal["regex"]
    pattern: str = Field(min_length=1, max_length=1000)


class RowCountCheck(_Check):
    type: Literal["row_count"]
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCountCheck:
        if self.min is None and self.max is None:
            raise ValueError("a row_count check needs min, max or both")
        return self


class FreshnessCheck(_ColumnCheck):
    type: Literal["freshness"]
    max_age: str | int = Field(description="Seconds, or a number with s, m, h or d.")

    @model_validator(mode="after")
    def _age(self) -> FreshnessCheck:
        seconds(self.max_age)
        return self


class SqlCheck(_Check):
    type: Literal["sql"]
    query: str = Field(min_length=1, max_length=10_000, description="Returns the failing rows.")


Check = Annotated[
    SchemaCheck
    | NotNullCheck
    | UniqueCheck
    | RangeCheck
    | AllowedCheck
    | RegexCheck
    | RowCountCheck
    | FreshnessCheck
    | SqlCheck,
    Field(discriminator="type"),
]


class CheckSpec(BaseModel):
    """The checks of a table (what ``tables checks set`` takes, as YAML or JSON)."""

    model_config = ConfigDict(extra="forbid")
    checks: list[Check] = Field(max_length=100)

    @model_validator(mode="after")
    def _unique_names(self) -> CheckSpec:
        seen: set[str] = set()
        for check in self.checks:
            label = check.label()
            if label in seen:
                raise ValueError(f"two checks are named {label!r}: give one a name")
            seen.add(label)
        return self


_AGE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")


def seconds(age: str | int) -> float:
    """A duration (``3600``, ``90s``, ``30m``, ``24h``, ``7d``) in seconds."""
    if isinstance(age, int):
        value, unit = float(age), "s"
    else:
        match = _AGE.fullmatch(age)
        if match is None:
            raise ValueError(f"max_age {age!r} is not a duration such as 90s, 30m, 24h or 7d")
        value, unit = float(match.group(1)), match.group(2) or "s"
    if value <= 0:
        raise ValueError("max_age must be more than zero")
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_spec(data: Any) -> CheckSpec:
    """A spec from parsed YAML or JSON: ``{"checks": [...]}`` or the list alone.
    :class:`InvalidInput` names the first problem and the check it is in."""
    if isinstance(data, list):
        data = {"checks": data}
    try:
        return CheckSpec.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(f"the checks are not valid: {_explain(error)}") from None


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load(text: str | None) -> CheckSpec | None:
    """The spec a table stores (JSON), or None when it has none."""
    if not text:
        return None
    return CheckSpec.model_validate(json.loads(text))


# -- declaration --------------------------------------------------------------------------


def validate(spec: CheckSpec, schema: pa.Schema | None, table: str, settings: DataSettings) -> None:
    """Refuse a spec that cannot work on ``table``: a bad regex or SQL always; an unknown
    column, a check on a column of the wrong type and SQL that does not bind when the
    schema is known (the table's, or the first write's data)."""
    import duckdb
    import pyarrow as pa

    from underlay.data.sql import _first_line, sandbox

    con = sandbox(settings)
    try:
        if schema is not None:
            con.register(table, pa.table({f.name: pa.array([], f.type) for f in schema}))
        for check in spec.checks:
            where = f"check {check.label()!r}"
            if schema is not None:
                _columns_exist(check, schema, where)
            if isinstance(check, RegexCheck):
                try:
                    con.execute("select regexp_matches('', ?)", [check.pattern])
                except duckdb.Error as error:
                    raise InvalidInput(f"{where}: bad regex: {_first_line(error)}") from None
            elif isinstance(check, SqlCheck):
                sql = _check_sql(check, table, where)
                if schema is not None:
                    try:
                        con.execute(f"select * from ({sql}\n) limit 0")  # noqa: S608 - quoted names, bound values
                    except duckdb.Error as error:
                        raise InvalidInput(f"{where}: {_first_line(error)}") from None
            elif isinstance(check, SchemaCheck):
                for column, name in check.columns.items():
                    try:
                        pa.type_for_alias(name)
                    except ValueError:
                        if not name.startswith(("timestamp[", "decimal", "list<", "struct<")):
                            raise InvalidInput(
                                f"{where}: {name!r} (column {column!r}) is no Arrow type"
                            ) from None
    finally:
        con.close()


def _columns_exist(check: _Check, schema: pa.Schema, where: str) -> None:
    import pyarrow as pa

    missing = [c for c in check.column_names() if c not in schema.names]
    if missing:
        raise InvalidInput(
            f"{where} names column(s) {', '.join(map(repr, missing))} that the table does not "
            f"have (its columns: {', '.join(schema.names)})"
        )
    if not isinstance(check, _ColumnCheck):
        return
    kind = schema.field(check.column).type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    temporal = pa.types.is_timestamp(kind) or pa.types.is_date(kind)
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    wrong = (
        (isinstance(check, RegexCheck) and not text)
        or (isinstance(check, FreshnessCheck) and not temporal)
        or (isinstance(check, RangeCheck) and not (numeric or temporal or text))
    )
    if wrong:
        raise InvalidInput(f"{where} cannot apply to column {check.column!r} of type {kind}")
    if isinstance(check, RangeCheck):
        for bound in (check.min, check.max):
            if bound is not None and numeric != isinstance(bound, int | float):
                raise InvalidInput(f"{where}: bound {bound!r} does not fit a {kind} column")
    if isinstance(check, AllowedCheck):
        for value in check.values:
            if not _fits(value, kind):
                raise InvalidInput(f"{where}: value {value!r} does not fit a {kind} column")


def _fits(value: Any, kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_boolean(kind):
        return isinstance(value, bool)
    if pa.types.is_integer(kind):
        return isinstance(value, int) and not isinstance(value, bool)
    if pa.types.is_floating(kind):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _check_sql(check: SqlCheck, table: str, where: str) -> str:
    """The check's query, refused unless it is one SELECT reading ``table`` only."""
    from underlay.data.sql import parse_select

    try:
        sql, names = parse_select(check.query)
    except InvalidInput as error:
        raise InvalidInput(f"{where}: {error}") from None
    others = [n for n in names if n != table]
    if others:
        raise InvalidInput(
            f"{where} may read only the table under check ({table!r}), not "
            + ", ".join(map(repr, others))
        )
    return sql.rstrip().rstrip(";")


# -- evaluation ---------------------------------------------------------------------------


@dataclass
class CheckResult:
    name: str
    type: str
    columns: list[str]
    blocking: bool
    passed: bool
    reason: str
    failing_rows: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class QualityReport:
    """What the checks found on one version: ``passed`` unless a blocking check failed."""

    rows: int
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.passed or not c.blocking for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "failed": [c.name for c in self.checks if not c.passed and c.blocking],
            "warnings": [c.name for c in self.checks if not c.passed and not c.blocking],
            "checks": [asdict(c) for c in self.checks],
        }


def evaluate(
    spec: CheckSpec,
    dataset: pads.Dataset,
    table: str,
    settings: DataSettings,
    now: dt.datetime | None = None,
) -> QualityReport:
    """Run every check of ``spec`` over ``dataset`` (the version of ``table``)."""
    from underlay.data.sql import sandbox

    con = sandbox(settings)
    run = _Run(con, table, dataset.schema, now or dt.datetime.now(dt.UTC))
    timer = threading.Timer(settings.sql_timeout_s, run.expire)
    timer.daemon = True
    timer.start()
    try:
        # a scanner, not the dataset: DuckDB's filter pushdown into a dataset fails on the
        # string_view files a Delta merge writes (pyarrow has no string/string_view kernel)
        con.register(table, dataset.scanner())
        return run.all(spec.checks)
    finally:
        timer.cancel()
        con.close()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Run:
    """One evaluation: the sandboxed connection with the table registered under its name."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, now: dt.datetime
    ) -> None:
        self.con, self.table, self.schema, self.now = con, _q(table), schema, now
        self.name = table
        self.expired = False

    def expire(self) -> None:
        """Out of time: stop the running query, and run no other."""
        self.expired = True
        self.con.interrupt()

    def _exec(self, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        if self.expired:
            raise _Broken("not evaluated: the checks ran out of time (setting data.sql_timeout_s)")
        return self.con.execute(sql, params or [])

    def all(self, checks: Sequence[_Check]) -> QualityReport:
        scan = [c for c in checks if not isinstance(c, SchemaCheck | UniqueCheck | SqlCheck)]
        predicates: list[tuple[str, list[Any]]] = []
        results: dict[int, CheckResult] = {}
        for check in scan:
            try:
                predicates.append(self._measure(check))
            except _Broken as broken:
                results[id(check)] = _failed(check, str(broken))
                predicates.append(("NULL", []))
        try:
            rows, values = self._aggregate(predicates)
        except _Broken as broken:
            rows, values = 0, [broken] * len(scan)
        for check, value in zip(scan, values, strict=True):
            if id(check) not in results:
                results[id(check)] = self._guarded(check, partial(self._judge, check, value, rows))
        for check in checks:
            if id(check) in results:
                continue
            if isinstance(check, SchemaCheck):
                results[id(check)] = self._schema(check)
            elif isinstance(check, UniqueCheck):
                results[id(check)] = self._guarded(check, partial(self._unique, check))
            elif isinstance(check, SqlCheck):
                results[id(check)] = self._guarded(check, partial(self._sql, check))
        return QualityReport(rows, [results[id(c)] for c in checks])

    def _guarded(self, check: _Check, evaluate: Callable[[], CheckResult]) -> CheckResult:
        """``evaluate()``, or a failed result saying why the check could not be evaluated."""
        import duckdb

        from underlay.data.sql import _first_line

        try:
            return evaluate()
        except _Broken as broken:
            return _failed(check, str(broken))
        except (duckdb.Error, InvalidInput) as error:
            reason = "the checks ran out of time" if self.expired else _first_line(error)
            return _failed(check, f"could not be evaluated: {reason}")

    # -- the one scan -------------------------------------------------------------------

    def _col(self, column: str) -> str:
        if column not in self.schema.names:
            raise _Broken(f"column {column!r} is not in this version of the table")
        return _q(column)

    def _measure(self, check: _Check) -> tuple[str, list[Any]]:
        """An aggregate over the table for ``check``: a count of failing rows, or a value."""
        if isinstance(check, RowCountCheck):
            return "count(*)", []
        if isinstance(check, FreshnessCheck):
            return f"max({self._col(check.column)})", []
        where, params = self._failing(check)
        return f"count(*) filter (where {where})", params

    def _failing(self, check: _Check) -> tuple[str, list[Any]]:
        """The predicate a failing row meets, and its parameters."""
        if isinstance(check, NotNullCheck):
            return " or ".join(f"{self._col(c)} is null" for c in check.columns), []
        if isinstance(check, RangeCheck):
            column, parts, params = self._col(check.column), [], []
            kind = self.schema.field(check.column).type
            if check.min is not None:
                parts.append(f"{column} < ?")
                params.append(_bound(check.min, kind))
            if check.max is not None:
                parts.append(f"{column} > ?")
                params.append(_bound(check.max, kind))
            return " or ".join(parts), params
        if isinstance(check, AllowedCheck):
            return f"not list_contains(?, {self._col(check.column)})", [check.values]
        if isinstance(check, RegexCheck):
            return f"not regexp_matches({self._col(check.column)}, ?)", [check.pattern]
        raise AssertionError(type(check))

    def _aggregate(self, predicates: list[tuple[str, list[Any]]]) -> tuple[int, list[Any]]:
        """count(*) and every measure, in one scan; when that fails, each measure alone so
        one broken check does not hide the others."""
        import duckdb

        from underlay.data.sql import _first_line

        exprs = ", ".join(["count(*)", *(p for p, _ in predicates)])
        params = [v for _, ps in predicates for v in ps]
        try:
            row = self._exec(f"select {exprs} from {self.table}", params).fetchone()  # noqa: S608 - quoted names, bound values
            assert row is not None
            return int(row[0]), list(row[1:])
        except duckdb.Error:
            pass
        try:
            count = self._exec(f"select count(*) from {self.table}").fetchone()  # noqa: S608 - quoted names, bound values
        except duckdb.Error as error:
            raise _Broken(f"could not be evaluated: {_first_line(error)}") from None
        values: list[Any] = []
        for expr, ps in predicates:
            try:
                one = self._exec(f"select {expr} from {self.table}", ps).fetchone()  # noqa: S608 - quoted names, bound values
                values.append(one[0] if one else None)
            except duckdb.Error as error:
                values.append(_Broken(f"could not be evaluated: {_first_line(error)}"))
        return int(count[0]) if count else 0, values

    def _judge(self, check: _Check, value: Any, rows: int) -> CheckResult:
        if isinstance(value, _Broken):
            return _failed(check, str(value))
        if isinstance(check, RowCountCheck):
            low = check.min is not None and value < check.min
            high = check.max is not None and value > check.max
            bounds = _between(check.min, check.max)
            reason = f"{value:,} rows" + (f", expected {bounds}" if low or high else f" ({bounds})")
            return _result(check, not (low or high), reason)
        if isinstance(check, FreshnessCheck):
            return self._fresh(check, value)
        failing = int(value or 0)
        if not failing:
            return _result(check, True, f"all {rows:,} rows pass", 0)
        where, params = self._failing(check)
        sample = self._sample(f"select * from {self.table} where {where}", params)  # noqa: S608 - quoted names, bound values
        return _result(check, False, f"{failing:,} of {rows:,} rows {_why(check)}", failing, sample)

    def _fresh(self, check: FreshnessCheck, newest: Any) -> CheckResult:
        limit = seconds(check.max_age)
        if newest is None:
            return _result(check, False, f"{check.column!r} holds no value", None)
        if not isinstance(newest, dt.datetime):
            newest = dt.datetime.combine(newest, dt.time.max)
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=dt.UTC)  # naive timestamps are read as UTC
        age = (self.now - newest).total_seconds()
        reason = (
            f"newest {check.column} is {newest.isoformat()} ({_age(age)} old, limit {_age(limit)})"
        )
        return _result(check, age <= limit, reason)

    # -- checks of their own ------------------------------------------------------------

    def _schema(self, check: SchemaCheck) -> CheckResult:
        problems = []
        for column, want in check.columns.items():
            if column not in self.schema.names:
                problems.append(f"column {column!r} is missing")
                continue
            have = self.schema.field(column).type
            if _type_name(want) != str(have):
                problems.append(f"column {column!r} is {have}, expected {want}")
        if check.exact:
            problems += [
                f"column {n!r} is not expected" for n in self.schema.names if n not in check.columns
            ]
        return _result(check, not problems, "; ".join(problems) or "the columns match")

    def _unique(self, check: UniqueCheck) -> CheckResult:
        keys = ", ".join(self._col(c) for c in check.columns)
        present = " and ".join(f"{self._col(c)} is not null" for c in check.columns)
        groups = (
            f"select {keys} from {self.table} where {present} group by {keys} having count(*) > 1"  # noqa: S608 - quoted names, bound values
        )
        row = self._exec(
            f"select count(*), coalesce(sum(n), 0) from (select count(*) as n from "  # noqa: S608 - quoted names, bound values
            f"{self.table} where {present} group by {keys} having count(*) > 1)"
        ).fetchone()
        keys_dup, failing = (int(row[0]), int(row[1])) if row else (0, 0)
        if not failing:
            return _result(check, True, "no duplicates", 0)
        sample = self._sample(
            f"select t.* from {self.table} as t semi join ({groups}) as d using ({keys}) "  # noqa: S608 - quoted names, bound values
            f"order by {keys}",
            [],
        )
        what = ", ".join(check.columns)
        reason = f"{failing:,} rows share {keys_dup:,} duplicated value(s) of {what}"
        return _result(check, False, reason, failing, sample)

    def _sql(self, check: SqlCheck) -> CheckResult:
        sql = _check_sql(check, self.name, f"check {check.label()!r}")
        row = self._exec(f"select count(*) from ({sql}\n)").fetchone()  # noqa: S608 - quoted names, bound values
        failing = int(row[0]) if row else 0
        if not failing:
            return _result(check, True, "the query returns no rows", 0)
        sample = self._sample(f"select * from ({sql}\n)", [])  # noqa: S608 - quoted names, bound values
        return _result(check, False, f"the query returns {failing:,} rows", failing, sample)

    def _sample(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cursor = self._exec(f"{sql} limit {SAMPLE_ROWS}", params)
        names = [d[0] for d in cursor.description or []][:MAX_SAMPLE_COLUMNS]
        return [
            {k: _cell(v) for k, v in zip(names, row, strict=False)} for row in cursor.fetchall()
        ]


class _Broken(Exception):
    """A check that cannot be evaluated on this version; its message says why."""


def _result(
    check: _Check,
    passed: bool,
    reason: str,
    failing: int | None = None,
    sample: list[dict[str, Any]] | None = None,
) -> CheckResult:
    return CheckResult(
        name=check.label(),
        type=str(getattr(check, "type", "")),
        columns=check.column_names(),
        blocking=check.blocking,
        passed=passed,
        reason=reason,
        failing_rows=failing,
        sample=sample or [],
    )


def _failed(check: _Check, reason: str) -> CheckResult:
    return _result(check, False, reason)


def _why(check: _Check) -> str:
    if isinstance(check, NotNullCheck):
        return "have a null in " + ", ".join(check.columns)
    if isinstance(check, RangeCheck):
        return f"have {check.column} outside {_between(check.min, check.max)}"
    if isinstance(check, AllowedCheck):
        shown = ", ".join(map(repr, check.values[:10])) + (", …" if len(check.values) > 10 else "")
        return f"have {check.column} not in [{shown}]"
    if isinstance(check, RegexCheck):
        return f"have {check.column} not matching {check.pattern!r}"
    return "fail"


def _between(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f">= {low}" if low is not None else f"<= {high}"


def _bound(value: Scalar, kind: pa.DataType) -> Any:
    """A range bound as the Python value DuckDB compares with a column of ``kind``."""
    import pyarrow as pa

    if isinstance(value, str) and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _Broken(f"bound {value!r} is no ISO date or timestamp") from None
        return moment.date() if pa.types.is_date(kind) else moment
    return value


def _type_name(name: str) -> str:
    import pyarrow as pa

    try:
        return str(pa.type_for_alias(name))
    except ValueError:
        return name


def _age(age: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(age) >= size:
            return f"{age / size:.1f}{unit}"
    return f"{age:.0f}s"


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value.isoformat() if isinstance(value, dt.date | dt.time) else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def summary(report: dict[str, Any]) -> Iterator[str]:
    """A report (``to_dict``) as readable lines: one per check, then its sampled rows."""
    for check in report.get("checks", []):
        if check["passed"]:
            yield f"  ok    {check['name']}: {check['reason']}"
            continue
        mark = "FAIL " if check["blocking"] else "WARN "
        yield f"  {mark} {check['name']}: {check['reason']}"
        for row in check.get("sample", []):
            yield "          " + json.dumps(row, default=str)


def read_spec(path: str | os.PathLike[str]) -> CheckSpec:
    """A spec from a YAML or JSON file (JSON is YAML too)."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"cannot read the checks file {path}: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise InvalidInput(f"the checks file {path} is no YAML or JSON{at}") from None
    return parse_spec(data)


def as_spec(checks: Any) -> CheckSpec:
    """A spec from a :class:`CheckSpec`, a file path, or its parsed form (list or dict)."""
    if isinstance(checks, CheckSpec):
        return checks
    if isinstance(checks, str | os.PathLike):
        return read_spec(checks)
    return parse_spec(checks)

"""Reading CSV, Parquet and JSON-lines files into Arrow batches of a table's schema, in
bounded memory, with the rows that cannot be read set aside (quarantined) with their line
number and the reason.

* **CSV** is parsed as text a block at a time (pyarrow's streaming reader), then each column
  is converted to its type: the table's type when the table exists, else the type inferred
  from the first megabyte. A row with the wrong number of fields, or a value that does not
  convert (``abc`` in an integer column), is quarantined; the rest loads. An empty field is
  a null. Line numbers count physical lines, the header being line 1 (a quoted field holding
  a newline is not supported: such a file is refused).
* **JSON lines** are read a batch of lines at a time; a line that is no JSON object, or whose
  values do not convert, is quarantined.
* **Parquet** is typed already: its batches are converted to the table's schema, and a file
  whose columns do not convert is refused as a whole.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from underlay.errors import InvalidInput

Format = Literal["csv", "parquet", "jsonl"]
RawMask = Callable[[str, "Sequence[str] | None"], str]
"""Masks a quarantined raw line, given the columns its fields follow (see Quarantine.table)."""
SAMPLE_BYTES = 1 << 20
MAX_RAW = 1000  # characters of a rejected row kept in the quarantine
MAX_KEPT = 100_000  # quarantined rows kept in detail (all are counted)


@dataclass
class Quarantine:
    """Rows set aside: (line, reason, raw text, file, columns), the first ``MAX_KEPT`` of them;
    all counted. ``file`` is the file of a folder being read now (rows added name it);
    ``columns`` are the CSV header a raw line's fields follow (None for JSON lines)."""

    rows: list[tuple[int | None, str, str, str | None, Sequence[str] | None]] = field(
        default_factory=list
    )
    count: int = 0
    file: str | None = None
    mask: RawMask | None = None  # what the quarantine table's raw lines are masked with
    _order: dict[str | None, int] = field(default_factory=dict)

    def add(
        self, line: int | None, reason: str, raw: str, columns: Sequence[str] | None = None
    ) -> None:
        self.count += 1
        if len(self.rows) < MAX_KEPT:
            self._order.setdefault(self.file, len(self._order))
            # a little more than is stored, so the field the cut falls in is masked whole
            self.rows.append((line, reason[:500], raw[: MAX_RAW + 64], self.file, columns))

    def table(self, source: str, mask: RawMask | None = None) -> pa.Table:
        """The rows kept, in file and line order, as the quarantine table's schema: ``source``
        is the file of a folder (``<folder>/<path in it>``), else ``source``. ``mask`` masks
        each raw line (given its columns) before it is cut to ``MAX_RAW`` characters."""
        self.rows.sort(key=lambda row: (self._order[row[3]], row[0] is None, row[0] or 0))
        sources = [f"{source}/{r[3]}" if r[3] is not None else source for r in self.rows]
        raws = [mask(r[2], r[4]) if mask is not None else r[2] for r in self.rows]
        return pa.table(
            {
                "source": pa.array(sources, pa.string()),
                "line": pa.array([r[0] for r in self.rows], pa.int64()),
                "reason": pa.array([r[1] for r in self.rows], pa.string()),
                "raw": pa.array([raw[:MAX_RAW] for raw in raws], pa.string()),
            }
        )


@dataclass
class Source:
    """A file ready to stream: its schema, its batches (a one-pass iterator) and what it set
    aside so far (complete once the batches are consumed)."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    quarantine: Quarantine


def detect_format(name: str, content_type: str = "") -> Format:
    """The format a file name or media type names; :class:`InvalidInput` when neither does."""
    lowered = name.lower()
    for suffix, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".jsonl", "jsonl")):
        if lowered.endswith(suffix) or lowered.endswith(suffix + ".part"):
            return fmt  # type: ignore[return-value]
    if lowered.endswith(".ndjson") or "ndjson" in content_type or "jsonl" in content_type:
        return "jsonl"
    if "csv" in content_type:
        return "csv"
    if "parquet" in content_type:
        return "parquet"
    raise InvalidInput(f"cannot tell the format of {name!r}: give csv, parquet or jsonl")


def open_source(
    path: Path,
    fmt: Format,
    schema: pa.Schema | None,
    batch_rows: int,
    quarantine: Quarantine | None = None,
) -> Source:
    """``path`` as batches of ``schema`` (inferred when None); rows set aside go to
    ``quarantine`` (a new one when None)."""
    into = Quarantine() if quarantine is None else quarantine
    if fmt == "csv":
        return _csv(path, schema, batch_rows, into)
    if fmt == "jsonl":
        return _jsonl(path, schema, batch_rows, into)
    return _parquet(path, schema, batch_rows, into)


# -- CSV -------------------------------------------------------------------------------------


def _csv(path: Path, schema: pa.Schema | None, batch_rows: int, quarantine: Quarantine) -> Source:
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        try:
            header = next(csv.reader(handle))
        except StopIteration:
            raise InvalidInput("the CSV file is empty: it needs a header line") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read the CSV header: {exc}") from None
    if len(set(header)) != len(header) or any(not name for name in header):
        raise InvalidInput("the CSV header has an empty or a repeated column name")
    if schema is not None:
        _same_columns(header, schema)
    target = schema if schema is not None else _infer_csv(path, header)
    invalid: list[int] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row.number)
        quarantine.add(
            row.number,
            f"expected {row.expected_columns} fields, found {row.actual_columns}",
            row.text,
            header,
        )
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                use_threads=False,
                block_size=4 << 20,
                encoding="utf8",
                skip_rows=1,
                column_names=header,
            ),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowException as exc:
        raise InvalidInput(f"cannot read the CSV file: {exc}") from None

    def batches() -> Iterator[pa.RecordBatch]:
        seen = 0  # good rows so far
        try:
            for batch in reader:
                for start in range(0, batch.num_rows, batch_rows):
                    part = batch.slice(start, batch_rows)
                    lines = _lines(seen, part.num_rows, invalid)
                    seen += part.num_rows
                    converted = _convert(part, target, lines, quarantine)
                    if converted.num_rows:
                        yield converted
        except pa.ArrowException as exc:
            raise InvalidInput(f"cannot read the CSV file: {exc}") from None

    return Source(target, batches(), quarantine)


CANDIDATES = (pa.int64(), pa.float64(), pa.bool_(), pa.date32(), pa.timestamp("us"))
INFER_SHARE = 0.95  # a column is typed when this share of its sampled values reads as the type


def _infer_csv(path: Path, header: list[str]) -> pa.Schema:
    """Column types from the first megabyte: the first of int64, float64, bool, date and timestamp
    that at least 95 % of a column's non-empty values read as (the rest will be
    quarantined), else text."""
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    if len(sample) == SAMPLE_BYTES:
        sample = sample[: sample.rfind(b"\n") + 1] or sample
    try:
        table = pacsv.read_csv(
            io.BytesIO(sample),
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=header),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda _row: "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:
        return pa.schema([(name, pa.string()) for name in header])
    return pa.schema([(name, _infer_type(table.column(name))) for name in header])


def _infer_type(column: pa.ChunkedArray) -> pa.DataType:
    values = pc.drop_null(pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column))
    if len(values) == 0:
        return pa.string()
    for candidate in CANDIDATES:
        try:
            pc.cast(values, candidate)
            return candidate
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        _, ok = _convert_each(values.combine_chunks(), candidate)
        if pc.sum(ok).as_py() >= INFER_SHARE * len(values):
            return candidate
    return pa.string()


def _lines(seen: int, count: int, invalid: list[int]) -> list[int]:
    """Physical line numbers of good rows ``seen .. seen+count``, skipping invalid lines.

    Good row ``g`` is on line ``g + 2`` (after the header) pushed down by one for each invalid
    line at or above it: linear in ``count`` and the invalid lines, whatever ``seen`` is (a
    walk from line 1 made a big file's ingest quadratic)."""
    bad = sorted(invalid)
    i = 0
    line = seen + 2
    while i < len(bad) and bad[i] <= line:
        line += 1
        i += 1
    result: list[int] = []
    for _ in range(count):
        result.append(line)
        line += 1
        while i < len(bad) and bad[i] == line:
            line += 1
            i += 1
    return result


# -- JSON lines ------------------------------------------------------------------------------


def _jsonl(path: Path, schema: pa.Schema | None, batch_rows: int, quarantine: Quarantine) -> Source:
    target = schema if schema is not None else _infer_jsonl(path)

    def batches() -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        raws: list[str] = []
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    quarantine.add(number, f"not JSON: {exc.msg}", text.rstrip("\n"))
                    continue
                if not isinstance(value, dict):
                    quarantine.add(number, "not a JSON object", text.rstrip("\n"))
                    continue
                rows.append(value)
                lines.append(number)
                raws.append(text.rstrip("\n"))
                if len(rows) >= batch_rows:
                    yield from _json_batch(rows, lines, raws, target, quarantine)
                    rows, lines, raws = [], [], []
        if rows:
            yield from _json_batch(rows, lines, raws, target, quarantine)

    return Source(target, batches(), quarantine)


def _infer_jsonl(path: Path) -> pa.Schema:
    sample: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                sample.append(value)
            if len(sample) >= 1000:
                break
    if not sample:
        raise InvalidInput("the JSON-lines file holds no JSON object to read a schema from")
    try:
        inferred = pa.Table.from_pylist(sample).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInput(f"cannot read a schema from the JSON lines: {exc}") from None
    return pa.schema(
        [(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in inferred]
    )


def _json_batch(
    rows: list[dict[str, Any]],
    lines: list[int],
    raws: list[str],
    schema: pa.Schema,
    quarantine: Quarantine,
) -> Iterator[pa.RecordBatch]:
    try:
        yield pa.RecordBatch.from_pylist(rows, schema=schema)
        return
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        pass
    good = []
    for row, line, raw in zip(rows, lines, raws, strict=True):
        try:
            good.append(pa.RecordBatch.from_pylist([row], schema=schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            quarantine.add(line, f"does not fit the schema: {exc}", raw)
    if good:
        yield pa.Table.from_batches(good, schema=schema).combine_chunks().to_batches()[0]


# -- Parquet ---------------------------------------------------------------------------------


def _parquet(
    path: Path, schema: pa.Schema | None, batch_rows: int, quarantine: Quarantine
) -> Source:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"not a readable Parquet file: {exc}") from None
    target = schema if schema is not None else file.schema_arrow

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for batch in file.iter_batches(batch_size=batch_rows):
                yield _cast_whole(batch, target)
        except pa.ArrowException as exc:
            raise InvalidInput(f"cannot read the Parquet file: {exc}") from None

    return Source(target, batches(), quarantine)


# -- conversion ------------------------------------------------------------------------------


def _cast_whole(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in ``schema`` (columns by name), or :class:`InvalidInput` naming the column."""
    _same_columns(batch.schema, schema)
    arrays = []
    for target in schema:
        column = batch.column(target.name)
        try:
            arrays.append(column if column.type == target.type else pc.cast(column, target.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InvalidInput(
                f"column {target.name!r} is {column.type} and cannot be read as {target.type}: "
                f"{exc}"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _same_columns(have: pa.Schema | list[str], want: pa.Schema) -> None:
    """Refuse data whose column names differ from the table's, naming each difference."""
    names = list(have.names) if isinstance(have, pa.Schema) else list(have)
    problems = [f"column {n!r} is not in the table" for n in names if n not in want.names]
    problems += [f"column {n!r} is missing from the data" for n in want.names if n not in names]
    if problems:
        raise InvalidInput(
            "the data does not match the table's schema: "
            + "; ".join(problems)
            + " (nothing was written; evolve the schema to change it)"
        )


def _convert(
    batch: pa.RecordBatch, schema: pa.Schema, lines: list[int], quarantine: Quarantine
) -> pa.RecordBatch:
    """A batch of text columns in ``schema``; rows with a value that does not convert go to
    the quarantine. Empty text is null for every type but text."""
    _same_columns(batch.schema, schema)
    keep = pa.array([True] * batch.num_rows)
    converted: dict[str, pa.Array] = {}
    for target in schema:
        text = batch.column(target.name)
        if pa.types.is_string(target.type) or pa.types.is_large_string(target.type):
            converted[target.name] = pc.cast(text, target.type)
            continue
        values = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        try:
            converted[target.name] = pc.cast(values, target.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column, ok = _convert_each(values, target.type)
            converted[target.name] = column
            keep = pc.and_(keep, ok)
            for i in range(batch.num_rows):
                if not ok[i].as_py():
                    fields = batch.slice(i, 1).to_pylist()[0]
                    value = values[i].as_py()
                    quarantine.add(
                        lines[i],
                        f"column {target.name!r}: cannot read {value!r} as {target.type}",
                        _csv_line(str(v) for v in fields.values()),
                        list(fields),
                    )
    table = pa.RecordBatch.from_arrays([converted[f.name] for f in schema], schema=schema)
    return table if pc.all(keep).as_py() else table.filter(keep)


def _csv_line(fields: Iterable[str]) -> str:
    """Fields as one CSV line (quoted where they need it), without its line end."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _convert_each(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """Convert value by value: (converted, with nulls where it failed; which ones worked)."""
    out: list[Any] = []
    ok: list[bool] = []
    for value in values:
        try:
            out.append(pc.cast(pa.array([value.as_py()], pa.string()), target)[0].as_py())
            ok.append(True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out.append(None)
            ok.append(False)
    return pa.array(out, target), pa.array(ok)

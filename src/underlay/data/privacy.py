"""PII masking on ingest: every write to a table passes through one :class:`IngestMasker`.

Privacy by default: the columns of the first batch are classified (a seeded sample), and
every column found to hold personal data that has no explicit policy is tokenised with the
project's key (HMAC-SHA256, so equal values give equal tokens and tables stay joinable). An
explicit policy (``redact``, ``partial``, ``tokenize`` or ``keep:<justification>``) wins.
The decisions made on the first batch hold for the whole write, so a column is never masked
in some rows and not in others. The findings report is kept with the table version.

Masking may change a column's type (a birth-date column tokenised becomes text; so does an
integer phone column): :meth:`IngestMasker.start` decides on the first batch and returns the
schema the write stores, which is the one checked against the table's.

Rows an ingest sets aside keep their raw text in the quarantine table, and a raw line holds
what the masked columns would have held. :meth:`IngestMasker.mask_raw` applies the write's
decisions to it: a CSV line whose fields match its header is masked field by field as each
column was (a birth date or a name, found by its column, gets the same token as in the
table); the fields of a line with too many or too few fields, whose columns cannot be told,
are masked wherever a masked column's detectors find something in them; a JSON object, key by
key. The quarantine table's own masker then tokenises what the free-text detectors find.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from underlay.data.pii import apply_policies, classify_table
from underlay.data.pii.classify import is_text
from underlay.data.pii.masking import (
    PARTIAL,
    REDACTED,
    ColumnReport,
    FindingsReport,
    PolicyKind,
    mask_value,
    masked_type,
    token,
)
from underlay.data.pii.semantics import scan_value
from underlay.errors import InvalidInput

PII_KEY_PURPOSE = "pii-tokens"
"""The purpose the project's PII tokenisation key is derived for (``Keyring.derived_key``):
every write of a project tokenises with it, so tokens join across tables."""


def parse_policies(specs: Iterable[str]) -> dict[str, str]:
    """``column=policy`` strings (``notes=partial``, ``city=keep:shipping``) as a mapping."""
    policies: dict[str, str] = {}
    for spec in specs:
        column, sep, policy = spec.partition("=")
        if not sep or not column or not policy:
            raise InvalidInput(
                f"{spec!r} is not COLUMN=POLICY (redact, partial, tokenize, keep:why)"
            )
        if column in policies:
            raise InvalidInput(f"column {column!r} has two PII policies")
        policies[column] = policy
    return policies


class IngestMasker:
    """Masks the batches of one write; :attr:`report` says what was found and done."""

    def __init__(self, schema: pa.Schema, policies: Mapping[str, str], key: bytes) -> None:
        missing = [c for c in policies if c not in schema.names]
        if missing:
            raise InvalidInput(
                f"PII policy for column(s) {', '.join(map(repr, missing))} that the data does "
                f"not have (its columns: {', '.join(schema.names)})"
            )
        self.schema = schema
        self.policies = dict(policies)
        self.key = key
        self.report: FindingsReport | None = None
        self._findings: dict[str, object] | None = None
        self._masked: dict[str, ColumnReport] = {}  # the columns this write masks

    def start(
        self,
        batches: Iterable[pa.RecordBatch],
        stored: pa.Schema | None = None,
        *,
        evolve: bool = False,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Classify the first batch (``stored``: the schema of the table written to, if it has
        one); returns the schema of the masked batches and the masked batches.

        Refused (:class:`InvalidInput`), unless ``evolve``, when tokenising a column by
        default would change the type the table holds it as (an earlier write kept a
        birth-date column's type with ``partial``): the policy must be given again."""
        source = iter(batches)
        first = next(source, None)
        sample = pa.Table.from_batches([] if first is None else [first], schema=self.schema)
        self._findings = classify_table(sample, stored=stored)  # type: ignore[assignment]
        _, report = apply_policies(
            sample.slice(0, 0),
            self.policies,
            self.key or b"-",
            self._findings,  # type: ignore[arg-type]
        )
        decided = {c.column: c.policy for c in report.columns.values()}
        self._masked = {
            c.column: c for c in report.columns.values() if c.policy not in (None, PolicyKind.KEEP)
        }
        for entry in report.columns.values():
            field = self.schema.field(entry.column)
            kept = (
                stored.field(entry.column).type
                if stored is not None and entry.column in stored.names
                else None
            )
            if (
                not evolve
                and entry.default
                and kept == field.type
                and masked_type(field.type, entry.policy) != kept
            ):
                kinds = ", ".join(t.value for t in entry.types)
                choices = "partial, redact" if pa.types.is_temporal(kept) else "redact"
                raise InvalidInput(
                    f"column {entry.column!r} holds {kinds} and would be tokenised by default, "
                    f"which makes it text, but the table holds it as {kept}: give the policy "
                    f"that keeps its type (--pii {entry.column}=POLICY: {choices} or keep:why), "
                    "or evolve the schema"
                )
        output = pa.schema(
            [
                f if is_text(f.type) else f.with_type(masked_type(f.type, decided.get(f.name)))
                for f in self.schema
            ]
        )
        rest = source if first is None else itertools.chain([first], source)
        return output, self._masked_batches(rest, output)

    def _masked_batches(
        self, batches: Iterable[pa.RecordBatch], output: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch], schema=self.schema)
            masked, self.report = apply_policies(
                table,
                self.policies,
                self.key,
                self._findings,  # type: ignore[arg-type]
            )
            yield from masked.cast(output).to_batches()

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The masked batches (the schema they have: :meth:`start`)."""
        return self.start(batches)[1]

    def mask_raw(self, raw: str, columns: Sequence[str] | None) -> str:
        """A quarantined raw line under this write's decisions (see the module docstring):
        ``columns`` is the CSV header its fields follow, None for a JSON line."""
        if not self._masked:
            return raw
        if columns is None:
            return self._mask_json(raw)
        try:
            fields = next(csv.reader([raw]))
        except (csv.Error, StopIteration):
            fields = raw.split(",")
        aligned = len(fields) == len(columns)
        masked = [
            self._mask_field(columns[i] if aligned else None, value)
            for i, value in enumerate(fields)
        ]
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(masked)
        return out.getvalue()

    def _mask_json(self, raw: str) -> str:
        try:
            row = json.loads(raw)
        except ValueError:
            return raw  # not JSON: the free-text detectors are all that can look at it
        if not isinstance(row, dict):
            return raw
        masked = {
            name: value
            if value is None or isinstance(value, bool | dict | list)
            else self._mask_field(name if name in self.schema.names else None, str(value))
            for name, value in row.items()
        }
        return json.dumps(masked, ensure_ascii=False, default=str)

    def _mask_field(self, column: str | None, value: str) -> str:
        """One field: as ``column`` was masked; with no column known, as any masked column
        whose detectors find something in it."""
        if not value:
            return value
        if column is not None:
            entry = self._masked.get(column)
            return value if entry is None else _mask_as(entry, value, self.key, whole=True)
        for entry in self._masked.values():
            masked = _mask_as(entry, value, self.key, whole=False)
            if masked != value:
                return masked
        return value


def _mask_as(entry: ColumnReport, value: str, key: bytes, *, whole: bool) -> str:
    """``value`` masked under the column's policy. Spans its detectors find are masked as
    the table's values are; with none found, ``whole`` masks the entire value (a value of a
    PII column that did not parse), else it is returned as it is."""
    found = scan_value(value, entry.column)
    if entry.policy is PolicyKind.REDACT:
        return REDACTED if found or whole else value
    assert entry.policy is not None
    if found:
        return mask_value(value, entry.policy, entry.column, key)
    if not whole:
        return value
    if not entry.types:
        return REDACTED  # an explicit policy on a column with nothing found: nothing to keep
    kind = entry.types[0]
    return token(value, kind, key) if entry.policy is PolicyKind.TOKENIZE else PARTIAL[kind](value)

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
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa

from underlay.data.pii import apply_policies, classify_table
from underlay.data.pii.classify import is_text
from underlay.data.pii.masking import FindingsReport, masked_type
from underlay.errors import InvalidInput


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
        return output, self._masked(rest, output)

    def _masked(
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

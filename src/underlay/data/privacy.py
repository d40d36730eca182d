"""PII masking on ingest: every write to a table passes through one :class:`IngestMasker`.

Privacy by default: the columns of the first batch are classified (a seeded sample), and
every column found to hold personal data that has no explicit policy is tokenised with the
project's key (HMAC-SHA256, so equal values give equal tokens and tables stay joinable). An
explicit policy (``redact``, ``partial``, ``tokenize`` or ``keep:<justification>``) wins.
The decisions made on the first batch hold for the whole write, so a column is never masked
in some rows and not in others. The findings report is kept with the table version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import pyarrow as pa

from underlay.data.pii import apply_policies, classify_table
from underlay.data.pii.masking import FindingsReport
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

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            table = pa.Table.from_batches([batch], schema=self.schema)
            if self._findings is None:
                self._findings = classify_table(table)  # type: ignore[assignment]
            masked, self.report = apply_policies(
                table,
                self.policies,
                self.key,
                self._findings,  # type: ignore[arg-type]
            )
            yield from masked.cast(self.schema).to_batches()

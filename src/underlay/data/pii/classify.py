"""Column classification by sampling: which PII types a column holds, and in what share.

A column is scanned on a seeded sample of its values (1,000 by default), so classifying a
billion-row table costs the same as a thousand-row one and gives the same answer every time.
The share of a type is the fraction of sampled non-null values holding at least one value of
that type; a column is PII when any share reaches the threshold (1 % by default: a free-text
column where one note in a hundred carries an email address holds personal data).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow as pa

from underlay.data.pii.detectors import PiiType
from underlay.data.pii.semantics import scan_value

DEFAULT_SAMPLE = 1000
DEFAULT_THRESHOLD = 0.01

Values: TypeAlias = Sequence[str | None] | pa.Array | pa.ChunkedArray


@dataclass(frozen=True)
class ColumnClassification:
    """What sampling found in one column."""

    column: str
    sampled: int
    shares: dict[PiiType, float] = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD

    @property
    def types(self) -> list[PiiType]:
        """The PII types at or over the threshold, most frequent first."""
        over = [t for t, share in self.shares.items() if share >= self.threshold]
        return sorted(over, key=lambda t: (-self.shares[t], t.value))

    @property
    def is_pii(self) -> bool:
        return bool(self.types)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "sampled": self.sampled,
            "shares": {t.value: round(s, 4) for t, s in sorted(self.shares.items())},
            "threshold": self.threshold,
            "types": [t.value for t in self.types],
            "pii": self.is_pii,
        }


def is_text(type_: pa.DataType) -> bool:
    """Whether an Arrow type holds strings (plain, large, view, or dictionary-encoded)."""
    if pa.types.is_dictionary(type_):
        return is_text(type_.value_type)
    return bool(
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_string_view(type_)
    )


def sample_values(values: Values, sample: int, seed: int) -> list[str]:
    """Up to ``sample`` non-null values, drawn without replacement by ``seed``."""
    arrow = isinstance(values, pa.Array | pa.ChunkedArray)
    present: Any = values
    present = present.drop_null() if arrow else [v for v in values if v is not None]
    if len(present) > sample:
        indices = sorted(random.Random(seed).sample(range(len(present)), sample))
        present = (
            present.take(pa.array(indices, pa.int64())) if arrow else [present[i] for i in indices]
        )
    return [str(v) for v in (present.to_pylist() if arrow else present)]


def classify_column(
    name: str,
    values: Values,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> ColumnClassification:
    """Scan a seeded sample of a column's values; the share of values holding each PII type."""
    drawn = sample_values(values, sample, seed)
    counts: Counter[PiiType] = Counter()
    for value in drawn:
        counts.update({f.type for f in scan_value(value, name)})
    shares = {t: c / len(drawn) for t, c in counts.items()} if drawn else {}
    return ColumnClassification(name, len(drawn), shares, threshold)


def classify_table(
    table: pa.Table,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, ColumnClassification]:
    """:func:`classify_column` for every string-like column of ``table``."""
    return {
        name: classify_column(name, table.column(name), sample, seed, threshold)
        for name in table.column_names
        if is_text(table.schema.field(name).type)
    }

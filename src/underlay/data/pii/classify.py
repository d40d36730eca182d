"""Column classification by sampling: which PII types a column holds, and in what share.

A column is scanned on a seeded sample of its values (1,000 by default), so classifying a
billion-row table costs the same as a thousand-row one and gives the same answer every time.
The share of a type is the fraction of sampled non-null values holding at least one value of
that type; a column is PII when any share reaches the threshold (1 % by default: a free-text
column where one note in a hundred carries an email address holds personal data).

Text columns are scanned whatever their name. Other columns are scanned when their name says
what they hold (:func:`typed_semantics`): a date or timestamp column named for a birth date
(``dob``, ``birth_date``, ``geburtsdatum`` ...) holds dates of birth by its name alone, every
value of it; an integer column named for a phone or card number (``phone``, ``card_number``
...) holds them when its values pass the phone or card validator, as a text column does.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow as pa

from underlay.data.pii.detectors import PiiType
from underlay.data.pii.semantics import column_semantics, number_semantics, scan_value

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
    named: PiiType | None = None  # the type its name alone gives a non-text column

    @property
    def types(self) -> list[PiiType]:
        """The PII types at or over the threshold (and the one its name gives), most
        frequent first."""
        over = {t for t, share in self.shares.items() if share >= self.threshold}
        over |= {self.named} if self.named is not None else set()
        return sorted(over, key=lambda t: (-self.shares.get(t, 0.0), t.value))

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


def is_temporal(type_: pa.DataType) -> bool:
    """Whether an Arrow type holds dates or timestamps."""
    return bool(pa.types.is_date(type_) or pa.types.is_timestamp(type_))


def typed_semantics(column: str, type_: pa.DataType) -> PiiType | None:
    """The PII type a non-text column holds by its name and type: DATE_OF_BIRTH for a date or
    timestamp column named for a birth date, PHONE or CREDIT_CARD for an integer column
    named for one; else None."""
    if is_temporal(type_) and column_semantics(column) is PiiType.DATE_OF_BIRTH:
        return PiiType.DATE_OF_BIRTH
    if pa.types.is_integer(type_):
        return number_semantics(column)
    return None


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
    stored: pa.Schema | None = None,
) -> dict[str, ColumnClassification]:
    """:func:`classify_column` for every string-like column of ``table``, and for the
    non-text columns whose name says they hold personal data (:func:`typed_semantics`).

    A birth-date column is PII by its name alone. So is an integer phone or card column
    when ``stored`` (the schema of the table written to) holds it as text: its earlier
    values were masked, so these must be too."""
    found: dict[str, ColumnClassification] = {}
    for name in table.column_names:
        type_ = table.schema.field(name).type
        if is_text(type_):
            found[name] = classify_column(name, table.column(name), sample, seed, threshold)
            continue
        kind = typed_semantics(name, type_)
        if kind is None:
            continue
        scanned = classify_column(name, table.column(name), sample, seed, threshold)
        was_text = stored is not None and name in stored.names and is_text(stored.field(name).type)
        by_name = kind is PiiType.DATE_OF_BIRTH or was_text
        shares = {t: v for t, v in scanned.shares.items() if t is kind}
        found[name] = ColumnClassification(
            name, scanned.sampled, shares, threshold, kind if by_name else None
        )
    return found

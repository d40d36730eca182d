"""Masking policies applied to Arrow columns, with privacy by default.

Four policies, one per column:

- ``redact``: every non-null value becomes the marker ``[REDACTED]`` (vectorised).
- ``partial``: each detected value keeps only what is needed to tell values apart by eye:
  the last 4 digits of a card, phone or SSN, an email's domain, an IBAN's country and last 4,
  the first two parts of an IP address, the year of a birth date, the initials of a name.
- ``tokenize``: each detected value becomes ``tok_<type>_<32 hex>``, an HMAC-SHA256 of the
  normalised value under the caller's key: the same value and key give the same token in
  every table (joins keep working), another key gives an unrelated one, and nothing reverses it.
- ``keep``: raw values stay; refused without a non-empty justification, which the report keeps.

``partial`` and ``tokenize`` replace the detected spans and keep the text around them, so a
free-text column stays readable.

Columns of other types (see :func:`~underlay.data.pii.classify.typed_semantics`) are masked
whole: a date or timestamp column (a birth date) is tokenised as text (its ISO date, so it
joins a text column holding the same date), keeps its type under ``partial`` with every value
cut to the 1st of January of its year, and under ``redact`` holds nulls; an integer column
(a phone or card number) is masked as the text of its digits (so ``tokenize`` and ``partial``
make it a text column), and holds nulls under ``redact``.

Each distinct value is masked once (the column is dictionary-encoded first), so repeated
values cost one scan.

:func:`apply_policies` checks every policy before it masks anything, then tokenises every
column classified as PII that has no explicit policy.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from underlay.data.pii.classify import (
    ColumnClassification,
    classify_table,
    is_temporal,
    is_text,
)
from underlay.data.pii.detectors import PiiType
from underlay.data.pii.semantics import scan_value
from underlay.errors import InvalidInput

REDACTED = "[REDACTED]"


class PolicyKind(StrEnum):
    REDACT = "redact"
    PARTIAL = "partial"
    TOKENIZE = "tokenize"
    KEEP = "keep"


@dataclass(frozen=True)
class Policy:
    """How one column is masked. ``keep`` requires a justification."""

    kind: PolicyKind
    justification: str | None = None

    def __post_init__(self) -> None:
        if self.kind is PolicyKind.KEEP and not (self.justification or "").strip():
            raise InvalidInput(
                "policy 'keep' needs a justification: say why raw values must be stored, "
                "e.g. 'keep: support calls customers back'"
            )

    @classmethod
    def redact(cls) -> Policy:
        return cls(PolicyKind.REDACT)

    @classmethod
    def partial(cls) -> Policy:
        return cls(PolicyKind.PARTIAL)

    @classmethod
    def tokenize(cls) -> Policy:
        return cls(PolicyKind.TOKENIZE)

    @classmethod
    def keep(cls, justification: str) -> Policy:
        return cls(PolicyKind.KEEP, justification)

    @classmethod
    def parse(cls, spec: Policy | str) -> Policy:
        """A policy from ``redact``, ``partial``, ``tokenize`` or ``keep: <justification>``."""
        if isinstance(spec, Policy):
            return spec
        name, _, justification = spec.partition(":")
        try:
            kind = PolicyKind(name.strip().lower())
        except ValueError:
            choices = ", ".join(k.value for k in PolicyKind)
            raise InvalidInput(f"unknown PII policy {name.strip()!r} (choose {choices})") from None
        return cls(kind, justification.strip() or None)


# --- tokens -------------------------------------------------------------------------------


def normalise(kind: PiiType, value: str) -> str:
    """The canonical form tokens are computed over, so formatting does not break joins."""
    if kind in (PiiType.PHONE, PiiType.CREDIT_CARD, PiiType.US_SSN):
        return re.sub(r"\D", "", value)
    if kind is PiiType.IBAN:
        return value.replace(" ", "").upper()
    if kind in (PiiType.IPV4, PiiType.IPV6):
        return str(ipaddress.ip_address(value))
    return " ".join(value.split()).casefold()


def token(value: str, kind: PiiType, key: bytes) -> str:
    """``tok_<type>_<hex>``: HMAC-SHA256 of the normalised value under ``key``, 128 bits."""
    message = f"{kind.value}\0{normalise(kind, value)}".encode()
    return f"tok_{kind.value}_{hmac.new(key, message, hashlib.sha256).hexdigest()[:32]}"


# --- partial masks ------------------------------------------------------------------------


def _keep_last_digits(value: str, keep: int = 4) -> str:
    total = sum(ch.isdigit() for ch in value)
    out, seen = [], 0
    for ch in value:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > total - keep else "*")
        else:
            out.append(ch)
    return "".join(out)


def _partial_email(value: str) -> str:
    return "***@" + value.rpartition("@")[2]


def _partial_iban(value: str) -> str:
    alnum = [i for i, ch in enumerate(value) if ch.isalnum()]
    hidden = set(alnum[2:-4])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(value))


def _partial_ip(value: str) -> str:
    if "." in value and ":" not in value:
        return ".".join(value.split(".")[:2]) + ".*.*"
    return ":".join(value.split(":")[:2]) + ":*"


def _partial_birth(value: str) -> str:
    year = re.search(r"\d{4}", value)
    span = year.span() if year else (0, 0)
    return "".join(
        "*" if ch.isalnum() and not span[0] <= i < span[1] else ch for i, ch in enumerate(value)
    )


def _partial_person(value: str) -> str:
    return " ".join(word[0] + "***" for word in value.split())


PARTIAL: dict[PiiType, Callable[[str], str]] = {
    PiiType.EMAIL: _partial_email,
    PiiType.PHONE: _keep_last_digits,
    PiiType.CREDIT_CARD: _keep_last_digits,
    PiiType.US_SSN: _keep_last_digits,
    PiiType.IBAN: _partial_iban,
    PiiType.IPV4: _partial_ip,
    PiiType.IPV6: _partial_ip,
    PiiType.DATE_OF_BIRTH: _partial_birth,
    PiiType.PERSON: _partial_person,
}


def mask_value(value: str, policy: PolicyKind, column: str | None = None, key: bytes = b"") -> str:
    """``value`` with every detected span partially masked or tokenised (right to left)."""
    out = value
    for f in reversed(scan_value(value, column)):
        raw = value[f.start : f.end]
        masked = token(raw, f.type, key) if policy is PolicyKind.TOKENIZE else PARTIAL[f.type](raw)
        out = out[: f.start] + masked + out[f.end :]
    return out


def mask_array(
    values: pa.Array | pa.ChunkedArray, policy: PolicyKind, column: str, key: bytes = b""
) -> pa.Array:
    """One column masked under ``policy``; nulls stay null, the type becomes (large) string."""
    plain = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(plain.type):
        plain = plain.cast(plain.type.value_type)
    out_type = pa.large_string() if pa.types.is_large_string(plain.type) else pa.string()
    plain = plain.cast(out_type)
    if policy is PolicyKind.KEEP:
        return plain
    if policy is PolicyKind.REDACT:
        return pc.if_else(
            pc.is_valid(plain), pa.scalar(REDACTED, out_type), pa.scalar(None, out_type)
        )
    encoded = pc.dictionary_encode(plain)
    distinct = encoded.dictionary.to_pylist()
    masked = pa.array([mask_value(v, policy, column, key) for v in distinct], out_type)
    return masked.take(encoded.indices)


def mask_dates(
    values: pa.Array | pa.ChunkedArray, policy: PolicyKind, key: bytes = b""
) -> pa.Array:
    """A date or timestamp column (dates of birth) masked whole: ``tokenize`` gives text
    tokens of each ISO date, ``partial`` the 1st of January of each year (same type),
    ``redact`` nulls (same type)."""
    plain = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if policy is PolicyKind.KEEP:
        return plain
    if policy is PolicyKind.REDACT:
        return pa.nulls(len(plain), plain.type)
    if policy is PolicyKind.PARTIAL:
        return pc.floor_temporal(plain, unit="year")
    days = plain if pa.types.is_date32(plain.type) else pc.cast(plain, pa.date32())
    encoded = pc.dictionary_encode(pc.cast(days, pa.string()))
    distinct = encoded.dictionary.to_pylist()
    tokens = pa.array([token(v, PiiType.DATE_OF_BIRTH, key) for v in distinct], pa.string())
    return tokens.take(encoded.indices)


def mask_numbers(
    values: pa.Array | pa.ChunkedArray, policy: PolicyKind, column: str, key: bytes = b""
) -> pa.Array:
    """An integer column (phone or card numbers) masked as the text of its digits (``tokenize``
    and ``partial`` give text; ``redact`` nulls of its type)."""
    plain = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if policy is PolicyKind.KEEP:
        return plain
    if policy is PolicyKind.REDACT:
        return pa.nulls(len(plain), plain.type)
    return mask_array(pc.cast(plain, pa.string()), policy, column, key)


def masked_type(type_: pa.DataType, policy: PolicyKind | None) -> pa.DataType:
    """The type a column of ``type_`` has once masked under ``policy``."""
    if policy in (None, PolicyKind.KEEP, PolicyKind.REDACT) or is_text(type_):
        return type_
    if is_temporal(type_) and policy is PolicyKind.PARTIAL:
        return type_
    return pa.string()


def _mask_column(values: pa.ChunkedArray, policy: PolicyKind, column: str, key: bytes) -> pa.Array:
    if is_temporal(values.type):
        return mask_dates(values, policy, key)
    if pa.types.is_integer(values.type):
        return mask_numbers(values, policy, column, key)
    return mask_array(values, policy, column, key)


# --- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnReport:
    """One column in a findings report: what was found and what was done about it."""

    column: str
    shares: dict[PiiType, float]
    types: list[PiiType]
    policy: PolicyKind | None
    justification: str | None = None
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "types": [t.value for t in self.types],
            "shares": {t.value: round(s, 4) for t, s in sorted(self.shares.items())},
            "policy": self.policy.value if self.policy else None,
            "justification": self.justification,
            "default": self.default,
        }


@dataclass(frozen=True)
class FindingsReport:
    """Per column of a masked table: PII types, shares, and the policy applied."""

    columns: dict[str, ColumnReport] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns.values()]}


def _check(table: pa.Table, policies: Mapping[str, Policy]) -> None:
    missing = sorted(set(policies) - set(table.column_names))
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise InvalidInput(
            f"PII policy names missing column(s) {names}; "
            f"the table has: {', '.join(table.column_names)}"
        )
    for name in policies:
        type_ = table.schema.field(name).type
        if not (is_text(type_) or is_temporal(type_) or pa.types.is_integer(type_)):
            raise InvalidInput(
                f"PII policy on column {name!r} of type {type_}: policies apply to text, "
                "date, timestamp and integer columns"
            )


def _decide(name: str, found: ColumnClassification | None, explicit: Policy | None) -> ColumnReport:
    shares = dict(found.shares) if found else {}
    types = found.types if found else []
    if explicit is not None:
        return ColumnReport(name, shares, types, explicit.kind, explicit.justification)
    if types:
        return ColumnReport(name, shares, types, PolicyKind.TOKENIZE, default=True)
    return ColumnReport(name, shares, types, None)


def apply_policies(
    table: pa.Table,
    policies: Mapping[str, Policy | str] | None = None,
    key: bytes | str = b"",
    findings: Mapping[str, ColumnClassification] | None = None,
) -> tuple[pa.Table, FindingsReport]:
    """Mask ``table``: explicit policies first, then every other PII column tokenised.

    ``findings`` is :func:`classify_table`'s result (computed here when not given). Every
    policy is checked before anything is masked: a policy on a missing or non-string column,
    an unknown policy, a ``keep`` without justification, or tokenising without a key raises
    :class:`~underlay.errors.InvalidInput`.
    """
    parsed = {name: Policy.parse(spec) for name, spec in (policies or {}).items()}
    _check(table, parsed)
    found = classify_table(table) if findings is None else findings
    names = [n for n in table.column_names if n in found or n in parsed]
    report = {n: _decide(n, found.get(n), parsed.get(n)) for n in names}
    secret = key.encode() if isinstance(key, str) else key
    if not secret and any(r.policy is PolicyKind.TOKENIZE for r in report.values()):
        tokenised = ", ".join(n for n, r in report.items() if r.policy is PolicyKind.TOKENIZE)
        raise InvalidInput(f"tokenizing column(s) {tokenised} needs a non-empty key")
    masked = table
    for name, entry in report.items():
        if entry.policy not in (None, PolicyKind.KEEP):
            column = _mask_column(table.column(name), entry.policy, name, secret)
            index = masked.schema.get_field_index(name)
            masked = masked.set_column(index, pa.field(name, column.type), column)
    return masked, FindingsReport(report)

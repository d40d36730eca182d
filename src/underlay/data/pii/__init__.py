"""PII detection and masking over Python strings and Arrow tables.

Pure functions and small classes, no database, no HTTP: the ingestion and table layers call
them. Detection (:mod:`.detectors`, :mod:`.semantics`) finds typed spans in text; classification
(:mod:`.classify`) samples columns; masking (:mod:`.masking`) applies per-column policies with
privacy by default::

    findings = classify_table(table)
    masked, report = apply_policies(table, {"notes": "partial"}, key=project_key)
"""

from __future__ import annotations

from underlay.data.pii.classify import ColumnClassification, classify_column, classify_table
from underlay.data.pii.detectors import (
    Finding,
    PiiType,
    card_ok,
    iban_ok,
    luhn_ok,
    scan_text,
    ssn_ok,
)
from underlay.data.pii.masking import (
    REDACTED,
    ColumnReport,
    FindingsReport,
    Policy,
    PolicyKind,
    apply_policies,
    mask_array,
    mask_value,
    token,
)
from underlay.data.pii.semantics import column_semantics, looks_like_name, scan_value

__all__ = [
    "REDACTED",
    "ColumnClassification",
    "ColumnReport",
    "Finding",
    "FindingsReport",
    "PiiType",
    "Policy",
    "PolicyKind",
    "apply_policies",
    "card_ok",
    "classify_column",
    "classify_table",
    "column_semantics",
    "iban_ok",
    "looks_like_name",
    "luhn_ok",
    "mask_array",
    "mask_value",
    "scan_text",
    "scan_value",
    "ssn_ok",
    "token",
]

"""Feedback: ground-truth labels by request id, stored beside a deployment's prediction log,
and the two joined for monitoring.

Labels are appended to the deployment's feedback table, ``<deployment>_feedback`` (see
:func:`underlay.serving.predlog.feedback_table`), through the same data-layer path as the log
(a new table version per call, masked like any ingest: a label that holds PII is tokenised),
one row per label:

================  ====================  ===================================================
column            type                  what
================  ====================  ===================================================
``request_id``    string                the request the label is for
``row``           int32                 the row of that request (0 for one-row requests)
``ts``            timestamp[us, UTC]    when the label was received
``label``         string                the label as JSON (``1``, ``"churned"``, ``[0, 1]``)
``label_value``   float64               the label as a number (bools as 0/1), else null
``logged``        bool                  whether the request was in the prediction log then
================  ====================  ===================================================

A label for a request id the log does not hold is **accepted and flagged** (``logged``
false), not refused: the log is sampled, so most requests a client rightly labels were never
logged, and a label may also arrive before the logger's next batch is written. ``logged`` is
what the log held when the label came; :func:`joined` decides by the log as it is when read.
A later label for the same request and row supersedes an earlier one (labels are corrected
by sending them again): the join takes the latest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from underlay.errors import InvalidInput
from underlay.serving.predlog import feedback_table, predictions_table
from underlay.serving.predlog_writer import append_masked, deployment_exists

if TYPE_CHECKING:
    import pyarrow.dataset as pads
    from sqlalchemy.orm import Session

    from underlay.crypto import Keyring
    from underlay.data.tables import TableStore
    from underlay.store import Database

MAX_LABELS = 10_000
MAX_LABEL_JSON = 4096
MAX_REQUEST_ID = 128
MAX_ROW = 1_000_000


@dataclass(frozen=True)
class Label:
    """A ground-truth ``label`` (any JSON value) for row ``row`` of request ``request_id``."""

    request_id: str
    label: Any
    row: int = 0


@dataclass(frozen=True)
class FeedbackResult:
    """What a feedback call stored: the table and version, the labels, how many of them
    named a request the log did not hold (accepted, flagged ``logged`` false)."""

    table: str
    version: int
    accepted: int
    unlogged: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "version": self.version,
            "accepted": self.accepted,
            "unlogged": self.unlogged,
        }


def _check(labels: Sequence[Label]) -> list[tuple[str, int, str, float | None]]:
    """Each label checked: (request id, row, label as JSON, label as a number)."""
    if not labels:
        raise InvalidInput("feedback needs at least one label")
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels per call (got {len(labels)})")
    checked = []
    for i, item in enumerate(labels):
        rid = item.request_id
        if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_REQUEST_ID:
            raise InvalidInput(f"labels[{i}].request_id must be 1-{MAX_REQUEST_ID} characters")
        if isinstance(item.row, bool) or not isinstance(item.row, int):
            raise InvalidInput(f"labels[{i}].row must be a whole number")
        if not 0 <= item.row <= MAX_ROW:
            raise InvalidInput(f"labels[{i}].row must be between 0 and {MAX_ROW}")
        try:
            text = json.dumps(item.label, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"labels[{i}].label must be a JSON value (no NaN or infinity)"
            ) from None
        if item.label is None:
            raise InvalidInput(f"labels[{i}].label is missing (null)")
        if len(text) > MAX_LABEL_JSON:
            raise InvalidInput(f"labels[{i}].label is over {MAX_LABEL_JSON} characters of JSON")
        checked.append((rid, item.row, text, _number(item.label)))
    return checked


def _number(value: Any) -> float | None:
    """A label as a number (bools as 0 and 1), None for text, lists, objects and numbers
    beyond a float's range."""
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def record_feedback(
    db: Database,
    store: TableStore,
    keyring: Keyring,
    project_id: int,
    deployment: str,
    labels: Sequence[Label],
    *,
    now: float,
    created_by: int | None = None,
    require_deployment: bool = False,
) -> FeedbackResult:
    """Append ``labels`` to the deployment's feedback table as one new version (rules: the
    module docstring); refused whole (:class:`InvalidInput`, nothing written) if any label
    is malformed."""
    checked = _check(labels)
    with _scoped(db, project_id) as s:
        logged = _logged_ids(s, store, project_id, deployment, {c[0] for c in checked})
    flags = [c[0] in logged for c in checked]
    rows = pa.table(
        {
            "request_id": pa.array([c[0] for c in checked], pa.string()),
            "row": pa.array([c[1] for c in checked], pa.int32()),
            "ts": pa.array([int(now * 1_000_000)] * len(checked), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "label": pa.array([c[2] for c in checked], pa.string()),
            "label_value": pa.array([c[3] for c in checked], pa.float64()),
            "logged": pa.array(flags, pa.bool_()),
        }
    )
    name = feedback_table(deployment)
    result = append_masked(
        db,
        store,
        keyring,
        project_id,
        name,
        rows,
        policies=lambda _session: {},
        created_by=created_by,
        source=f"deployment:{deployment}:feedback",
        guard=deployment_exists(project_id, deployment) if require_deployment else None,
    )
    return FeedbackResult(name, result.version, len(checked), flags.count(False))


def _scoped(db: Database, project_id: int) -> Any:
    from underlay.store import Scope

    return db.session(Scope.projects(project_id))


def _published(
    session: Session, store: TableStore, project_id: int, name: str
) -> pads.Dataset | None:
    table = store.get(session, project_id, name, missing_ok=True)
    if table is None or table.published_version is None:
        return None
    return store.published_dataset(table, table.published_version)


def _logged_ids(
    session: Session, store: TableStore, project_id: int, deployment: str, ids: set[str]
) -> set[str]:
    dataset = _published(session, store, project_id, predictions_table(deployment))
    if dataset is None:
        return set()
    found = dataset.to_table(
        columns=["request_id"], filter=pc.field("request_id").isin(pa.array(sorted(ids)))
    )
    return set(found.column("request_id").to_pylist())


def joined(
    session: Session,
    store: TableStore,
    project_id: int,
    deployment: str,
    *,
    since: float | None = None,
    until: float | None = None,
) -> pa.Table:
    """The deployment's logged rows that have a label, each with its latest label: every
    column of the log (:mod:`underlay.serving.predlog`), then ``label``, ``label_value``
    and ``label_ts``; only rows logged at or after ``since`` and before ``until`` (seconds
    since the epoch) when given. Empty (no columns) while either table has no data."""
    logs = _published(session, store, project_id, predictions_table(deployment))
    labels = _published(session, store, project_id, feedback_table(deployment))
    if logs is None or labels is None:
        return pa.table({})
    where = None
    for bound, op in ((since, pc.greater_equal), (until, pc.less)):
        if bound is not None:
            stamp = pa.scalar(int(bound * 1_000_000), pa.timestamp("us", tz="UTC"))
            test = op(pc.field("ts"), stamp)
            where = test if where is None else where & test
    log_rows = logs.to_table(filter=where)
    fb = labels.to_table(columns=["request_id", "row", "ts", "label", "label_value"])
    fb = fb.sort_by([("ts", "ascending")])  # stable: ties keep the order read
    fb = fb.append_column("_f", pa.array(range(fb.num_rows), pa.int64()))
    latest = fb.group_by(["request_id", "row"], use_threads=False).aggregate([("_f", "max")])
    keys = log_rows.select(["request_id", "row"]).append_column(
        "_l", pa.array(range(log_rows.num_rows), pa.int64())
    )
    # join on the keys and positions only (a join cannot carry list columns), then take
    pairs = keys.join(latest, ["request_id", "row"], join_type="inner", use_threads=False)
    pairs = pairs.sort_by([("_l", "ascending")])
    out = log_rows.take(pairs.column("_l"))
    chosen = fb.take(pairs.column("_f_max"))
    for name, target in (("label", "label"), ("label_value", "label_value"), ("ts", "label_ts")):
        out = out.append_column(target, chosen.column(name))
    return out

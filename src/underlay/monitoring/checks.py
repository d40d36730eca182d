"""Drift checks of deployments: a window of a deployment's prediction log against its
reference (the training table version, :mod:`underlay.monitoring.reference`), compared by
:func:`underlay.monitoring.drift.compute_drift`, stored, audited and alerted on.

* **Window.** The last ``rows`` rows of the log (5,000 by default), or the rows logged in a
  time span: ``since``/``until`` (seconds since the epoch) or ``last`` (``"90s"``, ``"15m"``,
  ``"1h"``, ``"2d"``, ``"1w"`` before now).
* **Columns.** Feature ``f`` of the reference is compared with the log's input column
  ``in_f``. The features are ``DriftOptions.columns`` when given, else the deployed model's
  named scalar inputs (its signature), else every column of the reference. A feature the
  reference or the log lacks is :class:`InvalidInput` naming it. With ``target`` (a column of
  the reference holding the training labels) the log's prediction column is compared with it
  too, as a prediction (``role: "prediction"``).
* **State.** ``too_few_rows`` when either side has fewer rows than ``DriftOptions.min_rows``
  (no scores: noise is not reported), ``drift`` when a column is flagged, else ``ok``.
* **Transactions.** Given a :class:`~underlay.store.Database`, the reference is resolved in a
  short transaction, the data read and compared outside any (a check may take seconds; an
  SQLite transaction holds the write lock), and the report stored and audited in a second
  one, with the alert. Given a session (a caller's step, e.g. the retraining loop), all of it
  happens in that session. A refused check is audited with the reason, and stores nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select
from sqlalchemy.orm import Session

from underlay.errors import InvalidInput, NotFound, UnderlayError
from underlay.identity import Action, Actor, read_project
from underlay.monitoring.drift import DriftOptions, DriftReport, compute_drift
from underlay.monitoring.models import DriftReportRow
from underlay.monitoring.reference import ReferenceTable, resolve_reference
from underlay.platform import audit_text
from underlay.serving.predlog import INPUT_PREFIX, predictions_table
from underlay.store.types import utcnow

if TYPE_CHECKING:
    from underlay.data.tables import TableStore
    from underlay.platform import Platform
    from underlay.store import Database
    from underlay.store.models import Project

DEFAULT_ROWS = 5000
MAX_ROWS = 10_000_000
_AGE = re.compile(r"(\d{1,9})([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
ACTION = "deployment.drift"


@dataclass(frozen=True)
class Window:
    """Which rows of the prediction log a check reads: the last ``rows``, or a time span
    (``since``/``until`` in seconds since the epoch, or ``last``, an age such as ``"1h"``).
    Nothing given: the last :data:`DEFAULT_ROWS` rows."""

    rows: int | None = None
    since: float | None = None
    until: float | None = None
    last: str | None = None

    def __post_init__(self) -> None:
        timed = self.since is not None or self.until is not None or self.last is not None
        if self.rows is not None and timed:
            raise InvalidInput("a window is the last N rows or a time span, not both")
        if self.last is not None and (self.since is not None or self.until is not None):
            raise InvalidInput("a window gives 'last' or 'since'/'until', not both")
        if self.rows is not None and (
            isinstance(self.rows, bool) or not 1 <= self.rows <= MAX_ROWS
        ):
            raise InvalidInput(f"window rows must be between 1 and {MAX_ROWS}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidInput(f"window {name} must be a time")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidInput("window 'since' must be before 'until'")
        if self.last is not None:
            age(self.last)

    @property
    def count(self) -> int | None:
        """The rows a count window reads; None for a time span."""
        timed = self.since is not None or self.until is not None or self.last is not None
        return None if timed else (self.rows or DEFAULT_ROWS)

    def span(self, now: float) -> tuple[float | None, float | None]:
        """The time span read (None: unbounded on that side)."""
        if self.last is not None:
            return now - age(self.last), None
        return self.since, self.until

    def to_dict(self, now: float) -> dict[str, Any]:
        if self.count is not None:
            return {"rows": self.count}
        since, until = self.span(now)
        out: dict[str, Any] = {"since": _iso(since), "until": _iso(until)}
        if self.last is not None:
            out["last"] = self.last
        return out


def age(text: str) -> float:
    """Seconds of an age such as ``90s``, ``15m``, ``1h``, ``2d``, ``1w``."""
    match = _AGE.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise InvalidInput(
            f"window last {str(text)[:40]!r} is not an age: write 90s, 15m, 1h, 2d or 1w"
        )
    return float(int(match.group(1)) * _SECONDS[match.group(2)])


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat()


@dataclass
class DriftCheck:
    """One drift check's outcome (stored when ``id`` is set)."""

    deployment: str
    reference: ReferenceTable
    window: dict[str, Any]
    rows: int
    state: str  # ok | drift | too_few_rows
    report: DriftReport
    id: int | None = None
    created_at: dt.datetime | None = None
    actor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> list[str]:
        return self.report.flagged

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the check, and per compared column its scores and chart data."""
        report = self.report.to_dict()
        features = [
            {
                "name": f["column"],
                "drifted": bool(f["flagged"] or f["missing_flagged"]),
                **{k: v for k, v in f.items() if k != "column"},
            }
            for f in report["features"]
        ]
        return {
            "id": self.id,
            "deployment": self.deployment,
            "reference": self.reference.ref,
            "reference_source": self.reference.source,
            "model": self.reference.model,
            "model_version": self.reference.model_version,
            "window": self.window,
            "rows": self.rows,
            "rows_reference": report["rows_reference"],
            "min_rows": report["min_rows"],
            "state": self.state,
            "flagged": self.flagged,
            "features": features,
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "actor": self.actor,
        }


@dataclass(frozen=True)
class _Plan:
    """What a check reads, resolved in a transaction and read outside it."""

    project_id: int
    reference: ReferenceTable
    reference_table: Any  # DataTable
    log_table: Any  # DataTable | None


def _state(report: DriftReport) -> str:
    if report.status == "too_few_rows":
        return "too_few_rows"
    return "drift" if report.flagged else "ok"


def check_drift(
    db_or_session: Database | Session | None,
    platform: Platform,
    project: str | Project,
    deployment_name: str,
    *,
    window: Window | None = None,
    options: DriftOptions | None = None,
    actor: Actor,
    store: bool = True,
    reference: str | None = None,
    target: str | None = None,
    tables: TableStore | None = None,
    now: float | None = None,
) -> DriftCheck:
    """Check ``deployment_name``'s prediction log over ``window`` against its reference (the
    module docstring); stored, audited and alerted on when ``store``. ``reference`` names the
    reference table version instead of lineage; ``target`` a reference column of labels to
    compare the predictions with. Storing needs write access to the project, a check that
    is not stored read access."""
    from underlay.data.tables import TableStore

    window = window or Window()
    options = options or DriftOptions()
    tables = tables or TableStore(platform.settings)
    moment = time.time() if now is None else now
    project_name = project if isinstance(project, str) else project.name
    resource = f"project:{audit_text(project_name)}/deployment:{audit_text(deployment_name)}"
    need = Action.write if store else Action.read
    args = (tables, deployment_name, reference, window, options, target, moment)
    if isinstance(db_or_session, Session):
        session = db_or_session
        found = _project(session, project, actor, need)
        check = _compare(_plan(session, tables, found, deployment_name, reference), *args)
        if store:
            _store(session, platform, found, check, actor, resource)
        return check
    db = db_or_session or platform.db
    try:
        with db.session(actor.scope) as session:
            found = _project(session, project, actor, need)
            plan = _plan(session, tables, found, deployment_name, reference)
        check = _compare(plan, *args)
    except UnderlayError as error:
        with platform.unit(actor, ACTION, resource, project=project_name, audited=store):
            raise error from None  # audited as refused, with the reason
    if store:
        with platform.unit(actor, ACTION, resource, project=project_name, audited=False) as u:
            found = _project(u.session, project, actor, need)
            _store(u.session, platform, found, check, actor, resource)
    return check


def _project(session: Session, project: str | Project, actor: Actor, need: Action) -> Project:
    name = project if isinstance(project, str) else project.name
    return read_project(session, name, actor, need)


def _plan(
    session: Session,
    tables: TableStore,
    project: Project,
    deployment: str,
    reference: str | None,
) -> _Plan:
    ref = resolve_reference(session, project, deployment, reference=reference, store=tables)
    ref_table = tables.get(session, project.id, ref.table)
    log = tables.get(session, project.id, predictions_table(deployment), missing_ok=True)
    return _Plan(project.id, ref, ref_table, log)


def _compare(
    plan: _Plan,
    tables: TableStore,
    deployment: str,
    reference: str | None,
    window: Window,
    options: DriftOptions,
    target: str | None,
    now: float,
) -> DriftCheck:
    ref = plan.reference
    ref_dataset = tables.dataset(plan.reference_table, ref.version)
    ref_names = list(ref_dataset.schema.names)
    features = list(options.columns or ref.features or [n for n in ref_names if n != target])
    missing = [f for f in [*features, *([target] if target else [])] if f not in ref_names]
    if missing:
        raise InvalidInput(
            f"the reference {ref.ref} has no column {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(ref_names)})"
        )
    log_names, current = _read_log(plan, tables, deployment, features, window, now)
    absent = [f for f in features if f"{INPUT_PREFIX}{f}" not in log_names]
    if log_names and absent:
        raise InvalidInput(
            f"the prediction log of {deployment!r} has no column "
            f"{', '.join(repr(INPUT_PREFIX + f) for f in absent)} for the reference's feature "
            f"{', '.join(map(repr, absent))} (the log's inputs: "
            f"{', '.join(n for n in log_names if n.startswith(INPUT_PREFIX)) or 'none'})"
        )
    reading = list(dict.fromkeys([*features, *([target] if target else [])]))
    ref_data = ref_dataset.to_table(columns=reading)
    reference_cols: dict[str, Any] = {f: ref_data.column(f) for f in features}
    current_cols: dict[str, Any] = {}
    rows = current.num_rows
    for f in features:
        name = f"{INPUT_PREFIX}{f}"
        current_cols[f] = current.column(name) if name in current.column_names else pa.nulls(rows)
    predictions: tuple[str, ...] = ()
    if target is not None:
        column = _prediction_column(log_names, deployment)
        reference_cols[column] = ref_data.column(target)
        current_cols[column] = (
            current.column(column) if column in current.column_names else pa.nulls(rows)
        )
        predictions = (column,)
    run = dataclasses.replace(options, columns=tuple(reference_cols), predictions=predictions)
    report = compute_drift(reference_cols, current_cols, run)
    return DriftCheck(deployment, ref, window.to_dict(now), rows, _state(report), report)


def _prediction_column(log_names: list[str], deployment: str) -> str:
    from underlay.monitoring.performance import _prediction_column as pick

    if not log_names:
        return "out_prediction"
    try:
        return pick(log_names)
    except InvalidInput as error:
        raise InvalidInput(f"deployment {deployment!r}: {error.message}") from None


def _read_log(
    plan: _Plan,
    tables: TableStore,
    deployment: str,
    features: list[str],
    window: Window,
    now: float,
) -> tuple[list[str], pa.Table]:
    """The log's column names and the window's rows of the columns a check reads (oldest
    first); no names and no rows while the deployment has logged nothing."""
    table = plan.log_table
    if table is None or table.published_version is None:
        return [], pa.table({})
    dataset = tables.published_dataset(table, table.published_version)
    names = list(dataset.schema.names)
    wanted = [f"{INPUT_PREFIX}{f}" for f in features]
    wanted += [n for n in names if n.startswith("out_")]
    columns = ["ts", *dict.fromkeys(n for n in wanted if n in names)]
    since, until = window.span(now)
    where = None
    for bound, op in ((since, pc.greater_equal), (until, pc.less)):
        if bound is not None:
            stamp = pa.scalar(int(bound * 1_000_000), pa.timestamp("us", tz="UTC"))
            test = op(pc.field("ts"), stamp)
            where = test if where is None else where & test
    rows = dataset.to_table(columns=columns, filter=where)
    rows = rows.sort_by([("ts", "ascending")])
    count = window.count
    if count is not None and rows.num_rows > count:
        rows = rows.slice(rows.num_rows - count)
    return names, rows


def _store(
    session: Session,
    platform: Platform,
    project: Project,
    check: DriftCheck,
    actor: Actor,
    resource: str,
) -> None:
    """Insert the report row, audit it and raise the alert, in ``session``."""
    row = DriftReportRow(
        project_id=project.id,
        deployment=check.deployment,
        reference=check.reference.ref,
        window=json.dumps(check.window),
        rows=check.rows,
        state=check.state,
        flagged=json.dumps(check.flagged),
        report="{}",
        created_at=utcnow(),
        actor=actor.name[:64],
    )
    session.add(row)
    session.flush()
    check.id, check.created_at, check.actor = row.id, row.created_at, row.actor
    row.report = json.dumps(check.to_dict(), allow_nan=False)
    platform.audit.append(
        session,
        actor=actor.name,
        action=ACTION,
        resource=resource,
        project=project.name,
        outcome="ok",
        detail={
            "report": row.id,
            "reference": check.reference.ref,
            "window": check.window,
            "rows": check.rows,
            "state": check.state,
            "flagged": check.flagged,
        },
    )
    _alert_on_drift(session, project.id, check)


def _alert_on_drift(session: Session, project_id: int, check: DriftCheck) -> None:
    """Hand a stored check to the alerting layer: the project's ``drift`` rules judge it
    (``drifted_features``, ``share_drifted``, ``max_score``); a project without drift rules
    gets the built-in one, a ``drift`` alert (source ``drift``) whenever a column drifted."""
    from underlay.monitoring.alerts import raise_alert
    from underlay.monitoring.rules import evaluate_rules, has_rules

    if check.state == "too_few_rows":
        return
    features = check.report.features
    scores = [f.score for f in features if f.score is not None]
    values = {
        "drifted_features": float(len(check.flagged)),
        "share_drifted": len(check.flagged) / len(features) if features else 0.0,
        "max_score": max(scores) if scores else 0.0,
    }
    if has_rules(session, project_id, "drift"):
        evaluate_rules(
            session, project_id=project_id, source="drift", subject=check.deployment, values=values
        )
        return
    if check.state != "drift":
        return
    names = ", ".join(check.flagged[:10]) + (" ..." if len(check.flagged) > 10 else "")
    message = (
        f"deployment {check.deployment}: {len(check.flagged)} of {len(features)} "
        f"columns drifted from {check.reference.ref} ({names}); drift report {check.id}"
    )
    raise_alert(
        session,
        project_id=project_id,
        kind="drift",
        subject=check.deployment,
        message=message,
        source="drift",
        details={"report": check.id, "flagged": check.flagged[:50], **values},
    )


# -- stored reports ----------------------------------------------------------------------------


def _from_row(row: DriftReportRow) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(row.report or "{}")
    data["id"] = row.id
    return data


def list_drift_reports(
    session: Session, project_id: int, deployment: str, *, limit: int = 50
) -> list[dict[str, Any]]:
    """The deployment's stored reports, newest first, as :meth:`DriftCheck.to_dict` gave."""
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit must be between 1 and 1000")
    query = (
        select(DriftReportRow)
        .where(DriftReportRow.project_id == project_id, DriftReportRow.deployment == deployment)
        .order_by(DriftReportRow.id.desc())
        .limit(limit)
    )
    return [_from_row(row) for row in session.scalars(query)]


def read_drift_report(
    session: Session, project_id: int, deployment: str, report_id: int
) -> dict[str, Any]:
    """One stored report of the deployment; :class:`NotFound` for any other id."""
    row = session.scalar(
        select(DriftReportRow).where(
            DriftReportRow.project_id == project_id,
            DriftReportRow.deployment == deployment,
            DriftReportRow.id == report_id,
        )
    )
    if row is None:
        raise NotFound(f"deployment {deployment!r} has no drift report {report_id}")
    return _from_row(row)


def purge_project(session: Session, project_id: int) -> None:
    """Remove every drift report of the project (its deletion)."""
    from sqlalchemy import delete

    session.execute(delete(DriftReportRow).where(DriftReportRow.project_id == project_id))

"""Writing prediction logs and feedback: appending a batch to a deployment's log table of its
project through the data layer, with the input columns masked as the training tables were
(the writer half of :mod:`underlay.serving.predlog`, which describes the log and its table).

* :class:`PredictionTableWriter` appends a logger's batches to ``<deployment>_predictions``
  through :meth:`underlay.data.tables.TableStore.write` (a log version is a table version like
  any other: atomic, versioned, readable by SQL), with the input columns masked by the PII
  policies of the tables the model version was trained on, found through lineage
  (:func:`training_policies`). Every other column is classified as on any ingest, so PII the
  training table did not have is tokenised by default.
* :func:`append_masked` is that server-side write, shared with the feedback table
  (:mod:`underlay.serving.feedback`); :func:`conform` casts a batch to the stored types.
* :func:`open_logger` makes the started logger the data plane holds per deployment.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from underlay.errors import NotFound
from underlay.serving.predlog import INPUT_PREFIX, PredictionLogger, predictions_table

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from underlay.crypto import Keyring
    from underlay.data.tables import TableStore, WriteResult
    from underlay.platform import Platform
    from underlay.store import Database

_STRICTNESS = {"keep": 0, "partial": 1, "tokenize": 2, "redact": 3}


def training_policies(
    session: Session, project_id: int, model: str, version: int
) -> dict[str, str]:
    """The PII policy of each column of the tables ``model`` version ``version`` was trained
    on, by column name (``tokenize``, ``redact``, ``partial`` or ``keep:<why>``), from the
    reports of those table versions; where two tables differ, the stricter policy wins."""
    from sqlalchemy import select

    from underlay import lineage
    from underlay.data.models import DataTable, DataTableVersion
    from underlay.ml.registry.service import version_ref

    graph = lineage.upstream(session, version_ref(model, version), project_id=project_id)
    policies: dict[str, str] = {}
    for node in graph.nodes:
        if node.kind != "table_version":
            continue
        name, _, number = node.id.rpartition("@")
        row = session.scalar(
            select(DataTableVersion)
            .join(DataTable, DataTable.id == DataTableVersion.table_id)
            .where(
                DataTable.project_id == project_id,
                DataTable.name == name,
                DataTableVersion.version == int(number),
            )
        )
        if row is None:
            continue  # the table was deleted since: its policies went with it
        report = json.loads(row.pii_report or "{}")
        for column in report.get("columns", []):
            policy = column.get("policy")
            if policy is None:
                continue
            if policy == "keep":
                policy = f"keep:{column.get('justification') or 'kept in training'}"
            _stricter(policies, column["column"], policy)
    return policies


def _stricter(policies: dict[str, str], column: str, policy: str) -> None:
    kind = policy.partition(":")[0]
    held = policies.get(column)
    if held is None or _STRICTNESS[kind] > _STRICTNESS[held.partition(":")[0]]:
        policies[column] = policy


class PredictionTableWriter:
    """Appends log batches to ``<deployment>_predictions`` of project ``project_id`` through
    the data layer, inputs masked by the training tables' policies (module docstring).

    The policies of each model version are looked up once and kept. Called from the
    logger's thread; one write at a time per table (the table store's lock)."""

    def __init__(
        self,
        db: Database,
        store: TableStore,
        keyring: Keyring,
        project_id: int,
        deployment: str,
        *,
        created_by: int | None = None,
        require_deployment: bool = False,
    ) -> None:
        self.db = db
        self.store = store
        self.keyring = keyring
        self.project_id = project_id
        self.deployment = deployment
        self.table = predictions_table(deployment)
        self.created_by = created_by
        self.guard = deployment_exists(project_id, deployment) if require_deployment else None
        self._policies: dict[tuple[str, int], dict[str, str]] = {}
        self.last: WriteResult | None = None

    def __call__(self, rows: pa.Table) -> None:
        self.last = append_masked(
            self.db,
            self.store,
            self.keyring,
            self.project_id,
            self.table,
            rows,
            policies=lambda session: self._input_policies(session, rows),
            created_by=self.created_by,
            source=f"deployment:{self.deployment}",
            guard=self.guard,
        )

    def _input_policies(self, session: Session, rows: pa.Table) -> dict[str, str]:
        merged: dict[str, str] = {}
        pairs = {
            (str(m), int(v))
            for m, v in zip(
                rows.column("model").to_pylist(),
                rows.column("model_version").to_pylist(),
                strict=True,
            )
        }
        for pair in sorted(pairs):
            if pair not in self._policies:
                self._policies[pair] = training_policies(session, self.project_id, *pair)
            for column, policy in self._policies[pair].items():
                _stricter(merged, f"{INPUT_PREFIX}{column}", policy)
        return {c: p for c, p in merged.items() if c in rows.column_names}


def append_masked(
    db: Database,
    store: TableStore,
    keyring: Keyring,
    project_id: int,
    name: str,
    rows: pa.Table,
    *,
    policies: Callable[[Session], dict[str, str]],
    created_by: int | None,
    source: str,
    guard: Callable[[Session], None] | None = None,
) -> WriteResult:
    """Append ``rows`` to table ``name`` of the project (created on first use) as a new
    version, through :meth:`TableStore.write` with an :class:`IngestMasker` holding
    ``policies`` (computed in the metadata transaction) and the project's PII key: the
    server-side path every service write takes. Rows are cast to the stored types first,
    and a new column is added by schema evolution. ``guard`` may refuse the write (raise)
    before the table is created: a deployment removed meanwhile gets no new log table."""
    from underlay.data.privacy import PII_KEY_PURPOSE, IngestMasker
    from underlay.store import Scope

    with contextlib.ExitStack() as lease:
        with db.session(Scope.projects(project_id)) as session:
            if guard is not None:
                guard(session)
            table = store.ensure(session, project_id, name, created_by, lease=lease)
            table_id, stored = table.id, store.schema(table)
            key = keyring.derived_key(session, project_id, PII_KEY_PURPOSE)
            wanted = policies(session)
        rows, evolve = conform(rows, stored)
        masker = IngestMasker(rows.schema, wanted, key)
        return store.write(
            db,
            project_id,
            table_id,
            rows.to_batches(),
            rows.schema,
            mode="append",
            evolve=evolve,
            source=source,
            created_by=created_by,
            masker=masker,
        )


def conform(rows: pa.Table, stored: pa.Schema | None) -> tuple[pa.Table, bool]:
    """``rows`` with the stored table's columns and types (its missing columns as nulls);
    whether it adds columns (a write with schema evolution)."""
    # a column with nothing but nulls has no type a Delta table can hold: left out until a
    # batch brings values for it (the table gives it nulls in the rows without)
    known = stored.names if stored is not None else []
    rows = rows.select(
        [
            n
            for n in rows.column_names
            if n in known or not pa.types.is_null(rows.schema.field(n).type)
        ]
    )
    if stored is None:
        return rows, False
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for field in stored:
        if field.name in rows.column_names:
            column = rows.column(field.name)
            columns[field.name] = (
                column if column.type == field.type else column.cast(field.type, safe=True)
            )
        else:
            columns[field.name] = pa.nulls(rows.num_rows, field.type)
    extra = [n for n in rows.column_names if n not in stored.names]
    for name in extra:
        columns[name] = rows.column(name)
    return pa.table(columns), bool(extra)


def deployment_exists(project_id: int, deployment: str) -> Callable[[Session], None]:
    """A guard for :func:`append_masked`: :class:`NotFound` once the deployment is gone (its
    logs went with it; the last rows a closing logger flushes must not bring them back)."""

    def check(session: Session) -> None:
        from sqlalchemy import select

        from underlay.serving.models import Deployment

        found = session.scalar(
            select(Deployment.id).where(
                Deployment.project_id == project_id, Deployment.name == deployment
            )
        )
        if found is None:
            raise NotFound(f"deployment {deployment!r} was removed; its log is not written")

    return check


def open_logger(
    platform: Platform,
    store: TableStore,
    project_id: int,
    deployment: str,
    *,
    model: str,
    sample_rate: float,
    require_deployment: bool = False,
    **options: Any,
) -> PredictionLogger:
    """A started logger of ``deployment`` writing to its table in ``project_id`` (what the
    data plane holds per deployment; ``options``: batch_rows, flush_interval_s,
    max_buffer_rows, seed). Change its ``sample_rate`` attribute at any time; call
    :meth:`PredictionLogger.close` when the deployment goes (it writes what is left)."""
    writer = PredictionTableWriter(
        platform.db,
        store,
        platform.keyring,
        project_id,
        deployment,
        require_deployment=require_deployment,
    )
    logger = PredictionLogger(
        writer, sample_rate=sample_rate, deployment=deployment, model=model, **options
    )
    logger.start()
    return logger

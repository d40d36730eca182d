"""What the runs and models pages show, gathered through the services the API routes call.

Each function opens one unit of work for the caller's :class:`~underlay.identity.Actor` and
looks the project up with :func:`underlay.identity.read_project`, exactly as the routes in
``api/routes/runs.py`` and ``api/routes/models.py`` do: tenant scope and roles are the API's
own, and another project's run or model is a :class:`~underlay.errors.NotFound`. Nothing here
renders HTML; the page modules turn these plain values into templates and charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import ValidationError

from underlay import identity, lineage
from underlay.api.routes.models import model_read, version_read
from underlay.errors import InvalidInput, NotFound
from underlay.identity import Action, Actor
from underlay.ml import metrics, runs
from underlay.ml.registry import aliases, service
from underlay.ml.registry.schemas import (
    AliasEventRead,
    AliasSet,
    CardRead,
    ModelRead,
    ModelVersionRead,
)
from underlay.ml.schemas import RunComparison, RunRead
from underlay.platform import Platform, audit_text
from underlay.ui.auth import Caller, UiCaller
from underlay.ui.charts import MAX_POINTS

PER_PAGE = 50
MAX_CHART_KEYS = 12
"""Metric keys charted on a run's page or a comparison (the table lists them all)."""
MAX_COMPARE = 20

Points = list[tuple[float, float]]


@dataclass
class RunList:
    rows: list[dict[str, Any]]
    total: int
    page: int
    per_page: int
    metric_keys: list[str]
    param_keys: list[str]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass
class RunView:
    run: RunRead
    histories: dict[str, Points]


@dataclass
class Comparison:
    runs: list[RunRead]
    table: RunComparison
    charts: dict[str, dict[str, Points]]
    """Metric key -> run label -> its (step, value) points."""


@dataclass
class ModelView:
    model: ModelRead
    versions: list[ModelVersionRead]
    events: list[AliasEventRead]
    version: ModelVersionRead | None
    card: CardRead | None
    graph: dict[str, Any] = field(default_factory=dict)


def _runs(project: str) -> str:
    return f"project:{project}/runs"


def list_runs(
    platform: Platform,
    actor: Actor,
    project: str,
    *,
    filter_expr: str = "",
    order_by: str = "",
    page: int = 1,
    per_page: int = PER_PAGE,
) -> RunList:
    """One page of the project's runs matching a search (``metrics.acc > 0.9``), with the
    total; a bad expression is an :class:`InvalidInput` naming what is wrong."""
    with platform.unit(actor, "run.list", _runs(project), audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        search = runs.RunSearch(
            filter_expr=filter_expr,
            order_by=order_by,
            limit=per_page,
            offset=(page - 1) * per_page,
        )
        rows = runs.search_rows(u.session, found.id, search)
        total = runs.count_runs(u.session, found.id, search)
    metric_keys = sorted({k for r in rows for k in r["metrics"]})
    param_keys = sorted({k for r in rows for k in r["params"]})
    return RunList(rows, total, page, per_page, metric_keys, param_keys)


def _histories(
    session: Any, project_id: int, run_id: int, keys: Sequence[str]
) -> dict[str, Points]:
    out: dict[str, Points] = {}
    for key in list(keys)[:MAX_CHART_KEYS]:
        history = metrics.read_history(session, project_id, run_id, key, MAX_POINTS)
        out[key] = list(zip(history.steps.tolist(), history.values.tolist(), strict=True))
    return out


def read_run(platform: Platform, actor: Actor, project: str, run_id: int) -> RunView:
    """A run with the history of each of its metrics (thinned for a chart)."""
    with platform.unit(actor, "run.read", f"{_runs(project)}/{run_id}", audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        run = runs.render(u.session, runs.read_run(u.session, found.id, run_id))
        return RunView(run, _histories(u.session, found.id, run.id, sorted(run.metrics)))


def compare_runs(platform: Platform, actor: Actor, project: str, ids: Sequence[int]) -> Comparison:
    """Two or more runs side by side: their params and latest metrics, and one chart per
    metric key with a line per run."""
    wanted = list(dict.fromkeys(ids))
    if not 2 <= len(wanted) <= MAX_COMPARE:
        raise InvalidInput(f"compare needs 2 to {MAX_COMPARE} different runs, got {len(wanted)}")
    with platform.unit(actor, "run.read", _runs(project), audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        table = runs.compare(u.session, found.id, wanted)
        shown = runs.render_many(u.session, [runs.read_run(u.session, found.id, i) for i in wanted])
        charts: dict[str, dict[str, Points]] = {}
        for key in list(table.metrics)[:MAX_CHART_KEYS]:
            charts[key] = {}
            for run in shown:
                if key in run.metrics:
                    label = f"#{run.id} {run.name}"
                    charts[key][label] = _histories(u.session, found.id, run.id, [key])[key]
    return Comparison(shown, table, charts)


# -- models ----------------------------------------------------------------------------------


def _model(project: str, name: str) -> str:
    return f"project:{project}/model:{audit_text(name)}"


def list_models(platform: Platform, actor: Actor, project: str) -> list[ModelRead]:
    with platform.unit(actor, "model.list", f"project:{project}/models", audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        reads = []
        for model, latest, held in service.list_models(u.session, found.id):
            read = ModelRead.model_validate(model)
            read.latest_version, read.aliases = latest, held
            reads.append(read)
        return reads


def read_model(
    platform: Platform, actor: Actor, project: str, name: str, ref: str | None = None
) -> ModelView:
    """A model with its versions, alias moves, and for one version (``ref``: a number or an
    alias; default the latest) its card and lineage graph."""
    with platform.unit(actor, "model.read", _model(project, name), audited=False) as u:
        found = identity.read_project(u.session, project, actor)
        model = service.get_model(u.session, found.id, name)
        rows = service.list_versions(u.session, found.id, name)
        versions = [version_read(u.session, name, v) for v in rows]
        events, _held = aliases.alias_history(u.session, found.id, name)
        view = ModelView(
            model_read(u.session, model, versions[0].version if versions else None),
            versions,
            [AliasEventRead.model_validate(e) for e in reversed(events)],
            None,
            None,
        )
        if not rows:
            return view
        chosen = service.get_version(u.session, found.id, name, ref or "latest")
        view.version = version_read(u.session, name, chosen)
        view.card = service.card(u.session, found, name, str(chosen.version), "html")
        root = service.version_ref(name, chosen.version)
        graph = lineage.lineage(u.session, root, "both", 4, project_id=found.id)
        view.graph = graph.as_dict()
        return view


def parse_ids(text: str) -> list[int]:
    """Run ids from ``3,5 7``; anything else is an :class:`InvalidInput`."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) > MAX_COMPARE or not all(p.isdigit() and len(p) <= 10 for p in parts):
        raise InvalidInput(f"ids must be up to {MAX_COMPARE} run numbers, e.g. 3,5")
    ids = [int(p) for p in parts]
    if any(not 1 <= i <= 2**31 - 1 for i in ids):
        raise NotFound("run not found")
    return ids


def pick_project(caller: UiCaller, requested: str) -> str | None:
    """The project a list page shows: the one asked for (checked by the view's own lookup),
    else the caller's first; None when the caller belongs to none."""
    if requested:
        return requested
    return caller.projects[0].name if caller.projects else None


def chosen_project(
    caller: Caller, project: Annotated[str, Query(max_length=63)] = ""
) -> str | None:
    """A list page's ``?project=`` as a dependency (see :func:`pick_project`)."""
    return pick_project(caller, project)


ChosenProject = Annotated[str | None, Depends(chosen_project)]


def set_alias(
    platform: Platform,
    actor: Actor,
    project: str,
    name: str,
    alias: str,
    version: int,
    reason: str,
    client: str,
) -> AliasEventRead:
    """Point ``alias`` at ``version`` (members): the API's ``model.alias.set``, audited with
    who, why and the version it named before."""
    try:
        body = AliasSet(version=version, reason=reason)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    resource = f"{_model(project, name)}/alias:{audit_text(alias)}"
    with platform.unit(actor, "model.alias.set", resource, project=project, client=client) as u:
        found = identity.read_project(u.session, project, actor, Action.write)
        event = aliases.set_alias(
            u.session, found.id, name, alias, body.version, actor=actor.name, reason=body.reason
        )
        u.detail = {"version": body.version, "previous": event.previous_version, "face": "ui"}
        return AliasEventRead.model_validate(event)

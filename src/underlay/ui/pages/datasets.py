"""``/datasets``: a project's datasets and tables; a dataset's versions; a table's schema,
versions with their quality reports and PII findings, and an SQL box over the project's own
tables (the API's SQL service; data: :mod:`underlay.ui.views_data`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from underlay.api.deps import client_address
from underlay.api.routes.tables import Tables
from underlay.errors import InvalidInput
from underlay.ui import charts, views_data, views_ml
from underlay.ui.auth import Caller, Form, PlatformDep
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)

MAX_QUERY = 10_000


@router.get("/datasets")
def list_data(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    store: Tables,
    chosen: views_ml.ChosenProject,
) -> HTMLResponse:
    found = views_data.list_data(platform, store, caller.actor, chosen) if chosen else None
    return render(request, "datasets.html", caller, project=chosen, found=found)


@router.get("/datasets/{project}/{name}")
def read_dataset(
    request: Request, caller: Caller, platform: PlatformDep, project: str, name: str
) -> HTMLResponse:
    dataset, versions = views_data.read_dataset(platform, caller.actor, project[:63], name[:63])
    sizes = charts.line_chart(
        {"bytes": [(float(v.version), float(v.total_size)) for v in versions]},
        title="size per version",
        x_label="version",
        y_label="bytes",
    )
    return render(
        request,
        "dataset.html",
        caller,
        project=project,
        dataset=dataset,
        versions=versions,
        sizes=sizes,
    )


@router.get("/datasets/{project}/tables/{name}")
def read_table(
    request: Request, caller: Caller, platform: PlatformDep, store: Tables, project: str, name: str
) -> HTMLResponse:
    found = views_data.read_table(platform, store, caller.actor, project[:63], name[:63])
    rows = charts.line_chart(
        {"rows": [(float(v.version), float(v.num_rows)) for v in found.versions]},
        title="rows per version",
        x_label="version",
        y_label="rows",
    )
    return render(
        request,
        "table.html",
        caller,
        project=project,
        found=found,
        rows=rows,
        answer=None,
        query="",
        error=None,
    )


@router.post("/datasets/{project}/tables/{name}/sql")
def sql(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    store: Tables,
    form: Form,
    project: str,
    name: str,
) -> HTMLResponse:
    """The SQL box: one SELECT over the project's tables, the first rows shown."""
    query = str(form.get("query", ""))
    found = views_data.read_table(platform, store, caller.actor, project[:63], name[:63])
    answer, error = None, None
    try:
        if not query.strip() or len(query) > MAX_QUERY:
            raise InvalidInput(f"write one SELECT of at most {MAX_QUERY} characters")
        answer = views_data.sql_query(
            platform, store, caller.actor, project[:63], query, client_address(request)
        )
    except InvalidInput as exc:
        error = exc.message
    return render(
        request,
        "table.html",
        caller,
        status_code=400 if error else 200,
        project=project,
        found=found,
        rows=None,
        answer=answer,
        query=query,
        error=error,
    )

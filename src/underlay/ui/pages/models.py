"""``/models``: a project's registered models; ``/models/{project}/{name}``: versions, aliases
and their history, the lineage graph and the model card of one version, and (for members)
a form that moves an alias (data: :mod:`underlay.ui.views_ml`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup

from underlay.api.deps import client_address
from underlay.errors import InvalidInput
from underlay.identity import Action
from underlay.ui import charts, views_ml
from underlay.ui.auth import Caller, Form, PlatformDep
from underlay.ui.render import render

router = APIRouter(include_in_schema=False)

VersionQ = Annotated[str | None, Query(pattern=r"^(latest|[1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62})$")]


@router.get("/models")
def list_models(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    chosen: views_ml.ChosenProject,
) -> HTMLResponse:
    models = views_ml.list_models(platform, caller.actor, chosen) if chosen else []
    return render(request, "models.html", caller, project=chosen, models=models)


@router.get("/models/{project}/{name}")
def read_model(
    request: Request,
    caller: Caller,
    platform: PlatformDep,
    project: str,
    name: str,
    version: VersionQ = None,
) -> HTMLResponse:
    found = views_ml.read_model(platform, caller.actor, project[:63], name[:63], version)
    return render(
        request,
        "model.html",
        caller,
        project=project,
        found=found,
        graph=_graph(project, found.graph),
        card=Markup(found.card.text) if found.card else None,  # noqa: S704 - escaped by ml.registry.cards
        can_write=caller.can(Action.write, project),
    )


def _graph(project: str, graph: dict[str, Any]) -> Markup:
    if not graph:
        return charts.lineage_graph([], [], title="lineage", root="")
    nodes = [(f"{n['kind']}:{n['id']}", int(n["distance"])) for n in graph["nodes"]]
    edges = [
        (
            f"{e['src']['kind']}:{e['src']['id']}",
            e["relation"],
            f"{e['dst']['kind']}:{e['dst']['id']}",
        )
        for e in graph["edges"]
    ]
    links = {}
    for n in graph["nodes"]:
        if n["kind"] == "run":
            links[f"run:{n['id']}"] = f"/runs/{project}/{n['id']}"
        elif n["kind"] == "deployment":
            links[f"deployment:{n['id']}"] = f"/deployments/{project}/{n['id']}"
    root = f"{graph['root']['kind']}:{graph['root']['id']}"
    return charts.lineage_graph(
        nodes, edges, title="lineage of this version", root=root, links=links
    )


@router.post("/models/{project}/{name}/aliases")
def set_alias(
    request: Request, caller: Caller, platform: PlatformDep, form: Form, project: str, name: str
) -> RedirectResponse:
    """Point an alias at a version (members): the API's ``model.alias.set``, audited."""
    alias, version, reason = (str(form.get(k, "")).strip() for k in ("alias", "version", "reason"))
    if not version.isdigit() or len(version) > 9:
        raise InvalidInput("version must be a version number")
    views_ml.set_alias(
        platform,
        caller.actor,
        project[:63],
        name[:63],
        alias,
        int(version),
        reason,
        client_address(request),
    )
    return RedirectResponse(f"/models/{project}/{name}", status_code=303)

"""The reference of a deployment's drift checks: the table version its model was trained on.

:func:`resolve_reference` follows lineage upstream from the deployed model version
(``deployment <--deployed-- model_version <--produced-- run <--input-- table_version``, the
registry's direct ``trained`` edges, and any longer chain such as an ML pipeline's steps) and
takes the nearest ``table_version``. Several table versions at the same nearest distance (a
model trained on two tables) are ambiguous, and no table version at all (a model logged from
in-memory data) leaves nothing to compare with: both are :class:`InvalidInput` that say to
name one, ``reference="table@version"`` (or ``"table"`` for its published version).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from underlay import lineage
from underlay.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from underlay.data.tables import TableStore
    from underlay.serving.models import Deployment
    from underlay.store.models import Project

_REF = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})(?:@([0-9]{1,9}))?")


@dataclass(frozen=True)
class ReferenceTable:
    """A table version to compare a deployment's traffic with, and how it was found."""

    table: str
    version: int
    source: Literal["lineage", "override"]
    model: str
    model_version: int
    features: tuple[str, ...]
    """The model's named scalar inputs (its signature), the columns compared by default."""

    @property
    def ref(self) -> str:
        return f"{self.table}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "version": self.version,
            "ref": self.ref,
            "source": self.source,
            "model": self.model,
            "model_version": self.model_version,
            "features": list(self.features),
        }


def resolve_reference(
    session: Session,
    project: Project,
    deployment_name: str,
    *,
    reference: str | None = None,
    store: TableStore | None = None,
) -> ReferenceTable:
    """The reference of ``deployment_name`` (see the module docstring); ``reference`` names
    one explicitly (``table@version`` or ``table``: its published version). With ``store``,
    the table version is checked to exist and to be published."""
    from underlay.serving import service

    deployment = service.get_deployment(session, project.id, deployment_name)
    features = model_features(session, project.id, deployment.model, deployment.version)
    if reference is not None:
        table, version = _override(session, project, reference, store)
        source: Literal["lineage", "override"] = "override"
    else:
        table, version = _through_lineage(session, project, deployment)
        source = "lineage"
        if store is not None:
            _check_version(session, project, table, version, store)
    return ReferenceTable(table, version, source, deployment.model, deployment.version, features)


def model_features(session: Session, project_id: int, model: str, version: int) -> tuple[str, ...]:
    """The named inputs of one value per row (shape ``[-1]``) in the version's signature."""
    from underlay.ml.registry.models import ModelVersion, RegisteredModel

    raw = session.scalar(
        select(ModelVersion.signature)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(
            RegisteredModel.project_id == project_id,
            RegisteredModel.name == model,
            ModelVersion.version == version,
        )
    )
    try:
        signature = json.loads(raw or "{}")
    except ValueError:
        return ()
    return tuple(
        str(t["name"])
        for t in signature.get("inputs", [])
        if isinstance(t, dict) and list(t.get("shape", [])) == [-1] and "name" in t
    )


def _through_lineage(session: Session, project: Project, deployment: Deployment) -> tuple[str, int]:
    from underlay.ml.registry.service import version_ref

    start = version_ref(deployment.model, deployment.version)
    graph = lineage.upstream(session, start, project_id=project.id)
    tables = [n for n in graph.nodes if n.kind == "table_version"]
    what = f"model {deployment.model!r} version {deployment.version}"
    if not tables:
        raise InvalidInput(
            f"deployment {deployment.name!r} has no reference: lineage shows no table version "
            f"that {what} was trained on; name one with reference='TABLE@VERSION'"
        )
    nearest = min(abs(graph.distance[n]) for n in tables)
    closest = sorted(n.id for n in tables if abs(graph.distance[n]) == nearest)
    if len(closest) > 1:
        raise InvalidInput(
            f"deployment {deployment.name!r}: {what} was trained on several table versions "
            f"({', '.join(closest)}); name one with reference='TABLE@VERSION'"
        )
    table, _, number = closest[0].rpartition("@")
    return table, int(number)


def _override(
    session: Session, project: Project, reference: str, store: TableStore | None
) -> tuple[str, int]:
    match = _REF.fullmatch(reference.strip()) if isinstance(reference, str) else None
    if match is None:
        raise InvalidInput(
            f"reference {str(reference)[:80]!r} is not a table version: write TABLE@VERSION "
            "or TABLE (its published version)"
        )
    table, number = match.group(1), match.group(2)
    if store is None:
        if number is None:
            raise InvalidInput("reference: give the table's version, TABLE@VERSION")
        return table, int(number)
    found = store.get(session, project.id, table)
    assert found is not None
    version = store.published(session, found, None if number is None else int(number))
    return table, version


def _check_version(
    session: Session, project: Project, table: str, version: int, store: TableStore
) -> None:
    found = store.get(session, project.id, table, missing_ok=True)
    if found is None:
        raise NotFound(
            f"the reference table {table!r} (found through lineage) no longer exists; name "
            "another with reference='TABLE@VERSION'"
        )
    store.published(session, found, version)

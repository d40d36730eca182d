"""Lineage: typed edges between platform objects, and the graph walks that read them.

An edge says ``src --relation--> dst`` inside one project, for example
``dataset_version:sales@3 --trained--> run:41 --produced--> model_version:churn@2``. Objects
are referenced by :class:`ObjectRef` (a short kind word and an id), so any domain can add
edges without this module knowing its tables.

Design decisions:

* **One query per direction.** :func:`upstream` and :func:`downstream` are a single recursive
  CTE each (built with SQLAlchemy constructs; it runs on SQLite and PostgreSQL), so "what was
  trained on this data" and "what data made this model" cost one round trip at any depth. The
  walk never crosses projects: each step joins on the previous edge's ``project_id``.
* **Explicit tenant filter.** The store's scope hook filters ORM entity queries; the CTE reads
  the table through Core constructs, which that hook does not rewrite, so every walk adds the
  session scope's project filter itself (and fails closed without a scope).
* **A DAG, enforced on write.** :func:`add_edge` refuses self-loops and any edge whose target
  already reaches its source. The reachability check and the insert run under a per-project
  lock (a transaction-level advisory lock on PostgreSQL; SQLite transactions are already
  serialised by ``BEGIN IMMEDIATE``), so two concurrent edges cannot close a cycle together.
  Walks still stop at :data:`MAX_DEPTH` in case rows were written around this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Integer,
    Select,
    and_,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from underlay.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from underlay.store.db import Scope
from underlay.store.models import LineageEdge, Project

MAX_DEPTH = 1000
Direction = Literal["upstream", "downstream", "both"]

_WORD = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
_LOCK_NAMESPACE = 0x6C696E  # "lin": first key of the per-project advisory lock
_EDGES = LineageEdge.__table__


def _check_word(what: str, value: object) -> str:
    if not isinstance(value, str) or not _WORD.fullmatch(value):
        raise InvalidInput(
            f"lineage {what} must be a short lowercase word (a-z, 0-9 and _, starting with a "
            f"letter, at most 32 characters), got {value!r}"
        )
    return value


@dataclass(frozen=True, order=True)
class ObjectRef:
    """A reference to one object: ``ObjectRef("dataset_version", "sales@3")``."""

    kind: str
    id: str

    def __post_init__(self) -> None:
        _check_word("kind", self.kind)
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise InvalidInput(
                f"lineage id must be 1-128 characters of letters, digits and . _ : @ + - "
                f"(starting with a letter or digit), got {self.id!r}"
            )

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


Edge = tuple[ObjectRef, str, ObjectRef]


@dataclass
class LineageGraph:
    """What a walk found around ``root``.

    ``distance`` counts hops from the root: negative upstream (what the root came from),
    positive downstream (what came from it), 0 for the root. ``nodes`` lists the root first,
    then the others by hop count, upstream before downstream, then by kind and id.
    """

    root: ObjectRef
    direction: Direction
    nodes: list[ObjectRef] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    distance: dict[ObjectRef, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the API: refs as ``{"kind", "id"}`` mappings."""

        def ref(node: ObjectRef) -> dict[str, str]:
            return {"kind": node.kind, "id": node.id}

        return {
            "root": ref(self.root),
            "direction": self.direction,
            "nodes": [{**ref(n), "distance": self.distance[n]} for n in self.nodes],
            "edges": [
                {"src": ref(src), "relation": relation, "dst": ref(dst)}
                for src, relation, dst in self.edges
            ],
        }


# -- scope ----------------------------------------------------------------------------------


def _scope(session: Session) -> Scope:
    scope: Scope | None = session.info.get("scope")
    if scope is None:
        raise PermissionDenied("lineage query without a tenant scope refused")
    return scope


def _require_project(session: Session, project_id: int) -> None:
    if not _scope(session).allows(project_id):
        raise PermissionDenied(
            f"project {project_id} is outside this session's scope; ask for access to it"
        )
    if session.get(Project, project_id) is None:
        raise NotFound(f"project {project_id} does not exist")


def _filters(session: Session, table: Any, project_id: int | None) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    scope = _scope(session)
    if scope.project_ids is not None:
        clauses.append(table.c.project_id.in_(sorted(scope.project_ids)))
    if project_id is not None:
        clauses.append(table.c.project_id == project_id)
    return clauses


def _check_depth(depth: int | None) -> int:
    if depth is None:
        return MAX_DEPTH
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise InvalidInput(f"lineage depth must be between 1 and {MAX_DEPTH} (got {depth!r})")
    return depth


# -- the walk -------------------------------------------------------------------------------


def _walk(
    session: Session, ref: ObjectRef, *, upstream: bool, depth: int, project_id: int | None
) -> Select[Any]:
    """Every edge within ``depth`` hops of ``ref`` in one direction, with its least hop count.

    Upstream, a step follows edges whose ``dst`` is the node reached so far and moves to their
    ``src``; downstream the other way round.
    """

    def ends(table: Any) -> tuple[Any, Any, Any, Any]:
        near = (
            (table.c.dst_kind, table.c.dst_id) if upstream else (table.c.src_kind, table.c.src_id)
        )
        far = (table.c.src_kind, table.c.src_id) if upstream else (table.c.dst_kind, table.c.dst_id)
        return near[0], near[1], far[0], far[1]

    def columns(table: Any) -> list[Any]:
        c = table.c
        return [c.project_id, c.src_kind, c.src_id, c.relation, c.dst_kind, c.dst_id]

    near_kind, near_id, _, _ = ends(_EDGES)
    anchor = select(*columns(_EDGES), sql_cast(literal(1), Integer).label("depth")).where(
        near_kind == ref.kind, near_id == ref.id, *_filters(session, _EDGES, project_id)
    )
    walk = anchor.cte("lineage_walk", recursive=True)
    step = _EDGES.alias("lineage_step")
    step_near_kind, step_near_id, _, _ = ends(step)
    _, _, walk_far_kind, walk_far_id = ends(walk)
    recursive = (
        select(*columns(step), sql_cast(walk.c.depth + 1, Integer))
        .select_from(
            step.join(
                walk,
                and_(
                    step.c.project_id == walk.c.project_id,
                    step_near_kind == walk_far_kind,
                    step_near_id == walk_far_id,
                ),
            )
        )
        .where(walk.c.depth < depth, *_filters(session, step, project_id))
    )
    # UNION (not UNION ALL) drops repeated (edge, depth) rows, so diamonds do not multiply.
    walk = walk.union(recursive)
    keys = columns(walk)
    return select(*keys, func.min(walk.c.depth).label("depth")).group_by(*keys)


def _graph(
    session: Session,
    ref: ObjectRef,
    direction: Direction,
    depth: int | None,
    project_id: int | None,
) -> LineageGraph:
    if direction not in ("upstream", "downstream", "both"):
        raise InvalidInput(
            f"lineage direction must be upstream, downstream or both (got {direction!r})"
        )
    limit = _check_depth(depth)
    distance: dict[ObjectRef, int] = {ref: 0}
    edges: set[Edge] = set()
    for upstream in (True, False):
        if direction == ("downstream" if upstream else "upstream"):
            continue
        stmt = _walk(session, ref, upstream=upstream, depth=limit, project_id=project_id)
        for row in session.execute(stmt):
            src, dst = ObjectRef(row.src_kind, row.src_id), ObjectRef(row.dst_kind, row.dst_id)
            edges.add((src, row.relation, dst))
            far, hops = (src, -int(row.depth)) if upstream else (dst, int(row.depth))
            # Each far end keeps its fewest hops; in a DAG no node is on both sides.
            if far not in distance or abs(hops) < abs(distance[far]):
                distance[far] = hops
    nodes = sorted(distance, key=lambda node: (abs(distance[node]), distance[node], node))
    return LineageGraph(ref, direction, nodes, sorted(edges), distance)


def upstream(
    session: Session, ref: ObjectRef, depth: int | None = None, *, project_id: int | None = None
) -> LineageGraph:
    """What ``ref`` came from (data that made a model), up to ``depth`` hops."""
    return _graph(session, ref, "upstream", depth, project_id)


def downstream(
    session: Session, ref: ObjectRef, depth: int | None = None, *, project_id: int | None = None
) -> LineageGraph:
    """What came from ``ref`` (models trained on a dataset), up to ``depth`` hops."""
    return _graph(session, ref, "downstream", depth, project_id)


def lineage(
    session: Session,
    ref: ObjectRef,
    direction: Direction = "both",
    depth: int | None = None,
    *,
    project_id: int | None = None,
) -> LineageGraph:
    """Both walks (or one) merged into one graph around ``ref``."""
    return _graph(session, ref, direction, depth, project_id)


# -- writes ---------------------------------------------------------------------------------


def _lock_project(session: Session, project_id: int) -> None:
    """Serialise edge writes of one project for the rest of the transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(
                func.pg_advisory_xact_lock(
                    sql_cast(literal(_LOCK_NAMESPACE), Integer),
                    sql_cast(literal(project_id), Integer),
                )
            )
        )


def _reaches(session: Session, project_id: int, start: ObjectRef, target: ObjectRef) -> bool:
    walk = _walk(session, start, upstream=False, depth=MAX_DEPTH, project_id=project_id).subquery()
    found = select(exists().where(walk.c.dst_kind == target.kind, walk.c.dst_id == target.id))
    return bool(session.scalar(found))


def add_edge(
    session: Session, project_id: int, src: ObjectRef, relation: str, dst: ObjectRef
) -> LineageEdge:
    """Record ``src --relation--> dst``; adding an existing edge returns it unchanged.

    Raises :class:`InvalidInput` for a self-loop or a malformed relation, and
    :class:`Conflict` when the edge would close a cycle.
    """
    _check_word("relation", relation)
    if not isinstance(src, ObjectRef) or not isinstance(dst, ObjectRef):
        raise InvalidInput("lineage edges join two ObjectRef values")
    if src == dst:
        raise InvalidInput(f"a lineage edge cannot lead from {src} to itself")
    _require_project(session, project_id)
    _lock_project(session, project_id)
    existing = session.scalars(
        select(LineageEdge).where(
            LineageEdge.project_id == project_id,
            LineageEdge.src_kind == src.kind,
            LineageEdge.src_id == src.id,
            LineageEdge.relation == relation,
            LineageEdge.dst_kind == dst.kind,
            LineageEdge.dst_id == dst.id,
        )
    ).one_or_none()
    if existing is not None:
        return existing
    if _reaches(session, project_id, dst, src):
        raise Conflict(
            f"refusing {src} --{relation}--> {dst}: {src} already derives from {dst}, so the "
            "edge would close a cycle (lineage must stay acyclic)"
        )
    edge = LineageEdge(
        project_id=project_id,
        src_kind=src.kind,
        src_id=src.id,
        relation=relation,
        dst_kind=dst.kind,
        dst_id=dst.id,
    )
    session.add(edge)
    session.flush()
    return edge


def delete_edges_for(session: Session, project_id: int, ref: ObjectRef) -> int:
    """Remove every edge of the project that starts or ends at ``ref``; returns how many."""
    if not _scope(session).allows(project_id):
        raise PermissionDenied(
            f"project {project_id} is outside this session's scope; ask for access to it"
        )
    stmt = delete(LineageEdge).where(
        LineageEdge.project_id == project_id,
        or_(
            and_(LineageEdge.src_kind == ref.kind, LineageEdge.src_id == ref.id),
            and_(LineageEdge.dst_kind == ref.kind, LineageEdge.dst_id == ref.id),
        ),
    )
    result = cast(CursorResult[Any], session.execute(stmt))
    return int(result.rowcount)

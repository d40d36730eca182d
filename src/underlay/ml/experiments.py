"""Experiments: named groups of runs in a project, created on a run's first use of the name."""

from __future__ import annotations

from sqlalchemy import Select, delete, exc, func, select
from sqlalchemy.orm import Session

from underlay.errors import Conflict, NotFound
from underlay.ml.models import Experiment, Run


def create(
    session: Session,
    project_id: int,
    name: str,
    description: str = "",
    created_by: int | None = None,
) -> Experiment:
    """A new experiment; :class:`Conflict` if the project has one of that name."""
    experiment = Experiment(
        project_id=project_id, name=name, description=description, created_by=created_by
    )
    try:
        with session.begin_nested():  # a concurrent create of the same name loses here
            session.add(experiment)
    except exc.IntegrityError:
        raise Conflict(f"experiment {name!r} already exists in this project") from None
    return experiment


def get(session: Session, project_id: int, name: str) -> Experiment:
    found = session.scalar(_by_name(project_id, name))
    if found is None:
        raise NotFound(f"experiment {name[:80]!r} not found")
    return found


def get_or_create(
    session: Session, project_id: int, name: str, created_by: int | None = None
) -> Experiment:
    """The experiment called ``name``, created if the project has none yet."""
    found = session.scalar(_by_name(project_id, name))
    if found is not None:
        return found
    try:
        return create(session, project_id, name, "", created_by)
    except Conflict:  # created meanwhile by a concurrent run start
        return get(session, project_id, name)


def list_all(session: Session, project_id: int) -> list[tuple[Experiment, int]]:
    """Every experiment of the project with its number of runs, by name."""
    counts = (
        select(Run.experiment_id, func.count().label("n"))
        .where(Run.project_id == project_id)
        .group_by(Run.experiment_id)
        .subquery()
    )
    rows = session.execute(
        select(Experiment, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.experiment_id == Experiment.id)
        .where(Experiment.project_id == project_id)
        .order_by(Experiment.name)
    )
    return [(e, int(n)) for e, n in rows]


def purge_project(session: Session, project_id: int) -> None:
    """Remove the project's experiments and runs (before the project row and its blobs go:
    artifacts hold blobs by a foreign key without cascade)."""
    from underlay.ml.models import RunArtifact

    session.execute(delete(RunArtifact).where(RunArtifact.project_id == project_id))
    session.execute(delete(Run).where(Run.project_id == project_id))
    session.execute(delete(Experiment).where(Experiment.project_id == project_id))


def _by_name(project_id: int, name: str) -> Select[Experiment]:
    return select(Experiment).where(Experiment.project_id == project_id, Experiment.name == name)

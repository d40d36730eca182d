"""``underlay datasets``: versioned datasets of files (push, pull, versions, diff)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from underlay.cli.common import (
    JsonOpt,
    ProjectOpt,
    YesOpt,
    client,
    delete_in_project,
    parse_ref,
    project_of,
    show,
)

if TYPE_CHECKING:
    from underlay.client.data import Progress

datasets = typer.Typer(help="Versioned datasets of files.", no_args_is_help=True)

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")]


@contextlib.contextmanager
def _bar(what: str, quiet: bool) -> Iterator[Progress | None]:
    """A byte progress bar on stderr, only when stderr is a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(
        "[progress.description]{task.description}", *columns, console=Console(stderr=True)
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@datasets.command("ls")
def datasets_ls(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List the project's datasets with their latest version."""
    with client() as c:
        rows = c.list_datasets(project_of(project))
    show(rows, ["name", "latest_version", "file_count", "total_size", "description"], as_json=json_)


@datasets.command("create")
def datasets_create(
    name: str,
    project: ProjectOpt = None,
    description: Annotated[str, typer.Option(help="What the dataset holds.")] = "",
) -> None:
    """Create an empty dataset (``push`` also creates one on first use)."""
    with client() as c:
        c.create_dataset(project_of(project), name, description)
    typer.echo(f"created dataset {name}")


@datasets.command("push")
def datasets_push(
    name: str,
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, readable=True)],
    project: ProjectOpt = None,
    message: Annotated[str, typer.Option("--message", "-m", help="What changed.")] = "",
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Push every file under FOLDER as the next version; prints the version.

    Only content the project does not hold yet is uploaded. Symbolic links are skipped."""
    with client() as c, _bar(f"push {name}", quiet or json_) as progress:
        version = c.push_dataset(
            project_of(project), name, folder, message=message, progress=progress
        )
    if json_:
        typer.echo(version.model_dump_json(indent=2))
        return
    what = "pushed" if version.created else "unchanged:"
    typer.echo(
        f"{what} {name}@{version.version} ({version.file_count} files, {_size(version.total_size)})"
    )


@datasets.command("pull")
def datasets_pull(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    folder: Path,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a version's files into FOLDER, each verified against its digest."""
    name, version = parse_ref(ref, "dataset", latest=True)
    with client() as c, _bar(f"pull {ref}", quiet or json_) as progress:
        info = c.pull_dataset(
            project_of(project), name, folder, version=version or "latest", progress=progress
        )
    if json_:
        typer.echo(info.model_dump_json(indent=2))
        return
    typer.echo(f"pulled {name}@{info.version} into {folder} ({info.file_count} files)")


@datasets.command("versions")
def datasets_versions(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """List a dataset's versions, newest first."""
    with client() as c:
        rows = c.dataset_versions(project_of(project), name)
    show(rows, ["version", "file_count", "total_size", "created_at", "message"], as_json=json_)


@datasets.command("show")
def datasets_show(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]")],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List the files of a version (the latest by default)."""
    name, version = parse_ref(ref, "dataset", latest=True)
    with client() as c:
        files = list(c.dataset_files(project_of(project), name, version or "latest"))
    show(files, ["path", "size", "digest", "media_type"], as_json=json_)


@datasets.command("diff")
def datasets_diff(
    old: Annotated[str, typer.Argument(metavar="NAME@VERSION")],
    new: Annotated[
        str | None, typer.Argument(metavar="[NAME@]VERSION", help="Default: the latest.")
    ] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """What changed between two versions: files added (+), removed (-) and changed (~)."""
    from underlay.errors import InvalidInput

    name, before = parse_ref(old, "dataset", latest=True)
    after: int | None = None
    if new is not None:
        other, after = parse_ref(new if "@" in new else f"{name}@{new}", "dataset", latest=True)
        if other != name:
            raise InvalidInput(f"compare two versions of one dataset, not {name} and {other}")
    if before is None:
        raise InvalidInput(f"give the version to compare from: {name}@N")
    with client() as c:
        change = c.diff_dataset(project_of(project), name, before, after)
    if json_:
        typer.echo(change.model_dump_json(indent=2))
        return
    from underlay.cli.common import cell

    lines = [f"+ {f.path}" for f in change.added]
    lines += [f"- {f.path}" for f in change.removed]
    lines += [f"~ {f.path}" for f in change.changed]
    for line in sorted(lines, key=lambda text: text[2:]):
        typer.echo(cell(line).plain)
    typer.echo(
        f"{name}@{change.from_version} -> @{change.to_version}: {len(change.added)} added, "
        f"{len(change.removed)} removed, {len(change.changed)} changed",
        err=True,
    )


@datasets.command("rm")
def datasets_rm(
    name: str,
    project: ProjectOpt = None,
    yes: YesOpt = False,
) -> None:
    """Delete a dataset and all its versions (blobs other datasets hold stay)."""
    project_name = delete_in_project("dataset", name, project, yes, "all its versions")
    with client() as c:
        c.delete_dataset(project_name, name)
    typer.echo(f"deleted dataset {name}")

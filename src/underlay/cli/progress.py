"""Progress on long work, on stderr: byte bars for uploads and downloads, step bars for replays.

A bar is drawn only when stderr is a terminal (or ``FORCE_COLOR`` is set, which Rich reads
as "this is a terminal"; the tests force it so), and never with ``--quiet``: scripts and
pipes get clean output, and stdout never carries progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

Advance = Callable[[int], None]


def _console(quiet: bool) -> Console | None:
    """The stderr console to draw on, or None when no bar should be drawn."""
    from rich.console import Console

    if quiet:
        return None
    console = Console(stderr=True)
    return console if console.is_terminal else None


@contextmanager
def byte_bar(description: str, total: int | None, *, quiet: bool = False) -> Iterator[Advance]:
    """A bar with bytes, rate and ETA; yields a function to call with each chunk's size."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = _console(quiet)
    if console is None:
        yield lambda _n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def step_bar(description: str, total: int, *, quiet: bool = False) -> Iterator[Advance]:
    """A bar over ``total`` steps (trace jobs, simulated seconds) with ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = _console(quiet)
    if console is None:
        yield lambda _n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)

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


def escape(text: str) -> str:
    """``text`` (a file or trace name) as plain text: no Rich markup, no control characters."""
    from rich.markup import escape as escape_markup

    from underlay.logs import escape_control

    return escape_markup(escape_control(text))


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
        task = progress.add_task(escape(description), total=total)
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
        task = progress.add_task(escape(description), total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def count_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A bar whose total is learnt as it goes; yields ``update(done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = _console(quiet)
    if console is None:
        yield lambda _done, _total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(escape(description), total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)

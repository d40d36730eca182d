"""What ``jobs submit --workdir DIR`` sends: the folder, less what ``.underlayignore`` excludes.

``.underlayignore`` at the folder's root uses gitignore syntax (nested patterns, ``!keep``
negation, ``dir/`` patterns), read with :mod:`pathspec`. ``.git``, ``.venv`` and
``__pycache__`` folders are always left out. Symlinks are never followed: one that points
inside the folder travels as a link, one that points outside it is left out (and counted).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathspec import PathSpec

IGNORE_FILE = ".underlayignore"
ALWAYS_SKIPPED = frozenset({".git", ".venv", "__pycache__"})


@dataclass
class Selection:
    """The paths to pack (relative to the root, parents before children) and what was not."""

    root: Path
    paths: list[str] = field(default_factory=list)
    size: int = 0
    excluded: int = 0


def select(root: Path) -> Selection:
    """Walk ``root`` without following links and keep what ``.underlayignore`` does not exclude."""
    import pathspec

    ignore = root / IGNORE_FILE
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    selection = Selection(root)
    for rel, is_dir in _walk(root, spec, selection):
        selection.paths.append(rel)
        if not is_dir:
            selection.size += (root / rel).lstat().st_size
    return selection


def _walk(
    root: Path, spec: PathSpec[Any], selection: Selection, rel: str = ""
) -> Iterator[tuple[str, bool]]:
    """(relative path, is a folder) for each kept entry under ``root/rel``, sorted."""
    for entry in sorted(os.scandir(root / rel) if rel else os.scandir(root), key=lambda e: e.name):
        path = f"{rel}{entry.name}"
        is_dir = entry.is_dir(follow_symlinks=False)
        if _left_out(root, entry, path, is_dir, spec):
            selection.excluded += 1
            continue
        yield path, is_dir
        if is_dir:
            yield from _walk(root, spec, selection, f"{path}/")


def _left_out(
    root: Path, entry: os.DirEntry[str], path: str, is_dir: bool, spec: PathSpec[Any]
) -> bool:
    if is_dir and entry.name in ALWAYS_SKIPPED:
        return True
    if spec.match_file(f"{path}/" if is_dir else path):
        return True
    if entry.is_symlink():
        target = (Path(entry.path).parent / Path(entry.path).readlink()).resolve()
        return not target.is_relative_to(root.resolve())
    return False


def pack(selection: Selection, step: Callable[[int], None]) -> bytes:
    """The selection as a gzipped tar; ``step(1)`` after each entry."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for rel in selection.paths:
            archive.add(selection.root / rel, arcname=rel, recursive=False)
            step(1)
    return buffer.getvalue()


def size_warning(selection: Selection, limit_mb: float) -> str | None:
    """The warning for a folder over ``limit_mb`` MB after ``.underlayignore``, if it is."""
    mb = selection.size / 1_000_000
    if mb <= limit_mb:
        return None
    return (
        f"workdir is {mb:.0f} MB after {IGNORE_FILE}; large folders slow every submit: "
        f"add a {IGNORE_FILE} or use a dataset"
    )

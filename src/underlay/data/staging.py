"""Uploads staged on the server's disk before they are read into a table.

A table write streams its body to ``<home>/tmp/upload-<random>.<format>`` (a folder upload:
to files in a folder ``<home>/tmp/upload-<random>.d/``, locked through its ``.lock`` file), reads
it, then removes it. A process killed in
between (SIGKILL, a power cut) cannot remove it, so, as the blob store does with its partial
files: the writer holds an exclusive ``flock`` on each staged file from its creation until it
is removed (the kernel drops the lock when the process dies), and :func:`sweep` removes every
staged file nobody holds locked. With ``underlay up --workers N`` a sweep in one worker thus
spares the uploads the others are reading.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from underlay.errors import Unavailable

PREFIX = "upload-"
LOCK = ".lock"


def folder(home: Path) -> Path:
    """Where uploads are staged (created, 0700)."""
    path = home / "tmp"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def staged(home: Path, suffix: str) -> Iterator[tuple[BinaryIO, Path]]:
    """A new staged file, open for writing and locked; removed (still locked) on leaving."""
    where = folder(home)
    for _ in range(3):
        handle, name = tempfile.mkstemp(dir=where, prefix=PREFIX, suffix=suffix)
        out = os.fdopen(handle, "w+b")
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # released on close, or on death
            if not os.fstat(out.fileno()).st_nlink:
                continue  # a sweep removed it before we locked it: make another
            try:
                yield out, Path(name)
            finally:
                Path(name).unlink(missing_ok=True)
            return
        finally:
            out.close()
    raise Unavailable("could not create a temporary upload file: try again")


@contextlib.contextmanager
def staged_folder(home: Path) -> Iterator[Path]:
    """A new staging folder, locked through its ``.lock`` file; removed on leaving."""
    where = folder(home)
    for _ in range(3):
        made = Path(tempfile.mkdtemp(dir=where, prefix=PREFIX, suffix=".d"))
        try:
            lock = (made / LOCK).open("wb")
        except FileNotFoundError:
            continue  # a sweep removed it before we locked it
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not os.fstat(lock.fileno()).st_nlink:
                continue
            try:
                yield made
            finally:
                shutil.rmtree(made, ignore_errors=True)
            return
        finally:
            lock.close()
    raise Unavailable("could not create a temporary upload folder: try again")


def sweep(home: Path) -> int:
    """Remove the staged uploads no live process holds locked; returns how many."""
    where = home / "tmp"
    if not where.is_dir():
        return 0
    removed = 0
    for path in where.glob(f"{PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            removed += _remove_if_unlocked(path)
    return removed


def _remove_if_unlocked(path: Path) -> int:
    if path.is_dir():
        try:
            fd = os.open(path / LOCK, os.O_RDONLY)
        except FileNotFoundError:  # its writer died before it made the lock (or is making it,
            shutil.rmtree(path, ignore_errors=True)  # and will then try again)
            return 1
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live upload owns it
        # while locked: a writer that just created it sees it gone
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
        return 1
    finally:
        os.close(fd)

"""The locks of the tables' writes: one writer per table, and the first-write lease of a
table being created.

Both are ``flock``s, so they hold across every worker process of one server and the kernel
drops them when their holder dies (SIGKILL included). They live beside the tables on a local
root, in the home's ``locks/tables`` for an object store root (see :mod:`underlay.data.tables`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from underlay.errors import Unavailable

_LEASE_SUFFIX = ".first"  # <table id>.first: the first-write lease of a new table
_LEASE_TEMP = ".first-"  # a lease being made, before its rename


class TableLocks:
    """The write locks and first-write leases under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._thread_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def locked(self, project_id: int, table_id: int) -> Iterator[None]:
        """One writer per table: a thread lock here, an ``flock`` across processes."""
        key = f"{project_id}/{table_id}"
        with self._guard:
            lock = self._thread_locks.setdefault(key, threading.Lock())
        with lock:
            folder = self.root / str(project_id)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            with (folder / f"{table_id}.lock").open("a") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                yield

    @contextlib.contextmanager
    def first_write_lease(self, project_id: int, table_id: int) -> Iterator[None]:
        """Held by the request that created a table for its first write, from before the row
        commits until the write is over: an ``flock``ed ``<table id>.first`` file beside the
        table's write lock, made under a temporary name and renamed, so it is locked from the
        moment it can be seen. The kernel drops the lock when the holder dies (SIGKILL
        included); :meth:`abandoned` then finds it. The file is removed when the block ends
        normally and left for the sweep when it raises."""
        folder = self.root / str(int(project_id))
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = folder / f"{int(table_id)}{_LEASE_SUFFIX}"
        for _ in range(3):
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=_LEASE_TEMP)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, or on death
                if not os.fstat(handle).st_nlink:
                    continue  # a sweep took it for a dead creator's before we locked it
                Path(temporary).replace(final)
                yield
                final.unlink(missing_ok=True)  # still locked: no sweep acts on a live lease
                return
            finally:
                os.close(handle)
        raise Unavailable("could not create a table's first-write lease file: try again")

    def abandoned(self) -> Iterator[tuple[int, int]]:
        """The ``(project id, table id)`` of each lease nobody holds (its first write died
        with its process). Each is yielded while this process holds it, and its file removed
        once the caller has dealt with the table; leases a live request holds, in this
        process or another worker, are skipped."""
        for path in self.root.glob(f"*/{_LEASE_TEMP}*"):
            with contextlib.suppress(FileNotFoundError):
                _remove_unlocked(path)  # a creator killed before it named its lease
        for path in self.root.glob(f"*/*{_LEASE_SUFFIX}"):
            try:
                project_id, table_id = int(path.parent.name), int(path.stem)
                fd = os.open(path, os.O_RDONLY)
            except (ValueError, FileNotFoundError):
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live first write holds it
                if not os.fstat(fd).st_nlink:
                    continue  # its write finished meanwhile
                yield project_id, table_id
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)


def _remove_unlocked(path: Path) -> None:
    """Remove a lease file unless a live process holds it locked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)

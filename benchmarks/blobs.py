"""Blob store throughput against plain file copies, measured in the same run.

Generates ``--total-mib`` of mixed files (4 KiB to 64 MiB, log-uniform sizes, seeded), then
writes each one through the blob store (SHA-256 + AES-256-GCM, fsync, rename, SQLite metadata
in a temporary home) and with ``shutil.copyfile``, and reads each back: the blob through
``BlobStore.open``, the copy with plain 4 MiB reads. The paths alternate file by file so all
meet the same page cache and write-back. Two more write baselines put the ratio in context:
copy + fsync has the durability the blob store gives, and "user-space copy" moves the bytes
through the process in 4 MiB reads and writes (plus fsync), as any store that transforms
them must; ``copyfile`` copies inside the kernel. Target: the round trip (write and read
back) through the blob store at >= 0.5 x the same round trip with copyfile and plain reads;
each direction's ratio is printed too.

    python benchmarks/blobs.py --total-mib 1024
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from underlay.blobs import BlobStore
from underlay.config import Settings, ensure_home
from underlay.crypto import Keyring
from underlay.store import Database, Scope
from underlay.store.models import Project

MIN_SIZE, MAX_SIZE = 4 * 1024, 64 * 1024 * 1024
READ_BUFFER = 4 * 1024 * 1024


def file_sizes(total: int, rng: random.Random) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        size = int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))))
        sizes.append(max(MIN_SIZE, min(size, total - sum(sizes))))
    return sizes


def generate(folder: Path, sizes: list[int], rng: random.Random) -> list[Path]:
    pool = rng.randbytes(2 * MAX_SIZE)
    paths = []
    for i, size in enumerate(sizes):
        offset = rng.randrange(MAX_SIZE)
        path = folder / f"src-{i:05d}"
        path.write_bytes(i.to_bytes(16, "big") + pool[offset : offset + size - 16])
        paths.append(path)
    return paths


def copy_durably(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with dst.open("rb+") as f:
        os.fsync(f.fileno())


def copy_through_user_space(src: Path, dst: Path, buffer: bytearray) -> None:
    view = memoryview(buffer)
    with src.open("rb", buffering=0) as f, dst.open("wb", buffering=0) as out:
        while n := f.readinto(view):
            out.write(view[:n])
        os.fsync(out.fileno())


def read_plain(path: Path, buffer: bytearray) -> None:
    with path.open("rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def run(total_mib: int, seed: int, workdir: Path) -> None:
    rng = random.Random(seed)
    sizes = file_sizes(total_mib * 2**20, rng)
    src, plain, synced, user = (workdir / name for name in ("src", "plain", "synced", "user"))
    for folder in (src, plain, synced, user):
        folder.mkdir()
    sources = generate(src, sizes, rng)
    settings = Settings(home=workdir / "home")
    ensure_home(settings)
    db = Database(settings.database_url)
    db.migrate(lock_dir=settings.home)
    store = BlobStore(settings, Keyring(settings))
    with db.session(Scope.everything()) as s:
        project = Project(name="bench")
        s.add(project)
        s.flush()
        project_id = project.id

    digests: dict[Path, str] = {}

    def put(path: Path) -> None:
        with db.session(Scope.projects(project_id)) as s, path.open("rb") as f:
            digests[path] = store.put(s, project_id, f).digest

    def read_blob(digest: str) -> None:
        with db.session(Scope.projects(project_id)) as s:
            chunks = store.open(s, project_id, digest)
        for _ in chunks:
            pass

    labels = ["copy", "copy+fsync", "user copy", "blob write", "read", "blob read"]
    spent = dict.fromkeys(labels, 0.0)
    buffer = bytearray(READ_BUFFER)

    def timed_in_turn(steps: list[tuple[str, Callable[[], object]]], turn: int) -> None:
        """Run each step once, timed; ``turn`` rotates which goes first."""
        shift = turn % len(steps)
        for label, step in steps[shift:] + steps[:shift]:
            start = time.perf_counter()
            step()
            spent[label] += time.perf_counter() - start

    for i, path in enumerate(sources):
        timed_in_turn(
            [
                ("copy", partial(shutil.copyfile, path, plain / path.name)),
                ("copy+fsync", partial(copy_durably, path, synced / path.name)),
                ("user copy", partial(copy_through_user_space, path, user / path.name, buffer)),
                ("blob write", partial(put, path)),
            ],
            i,
        )
    for i, path in enumerate(sources):
        timed_in_turn(
            [
                ("read", partial(read_plain, plain / path.name, buffer)),
                ("blob read", partial(read_blob, digests[path])),
            ],
            i,
        )
    db.dispose()

    total = sum(sizes)
    rate = {label: total / seconds / 1e6 for label, seconds in spent.items()}
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"files: {len(sizes)} ({min(sizes) // 1024} KiB to {max(sizes) / 2**20:.1f} MiB), "
        f"{total / 2**20:.0f} MiB in all, seed {seed}, "
        f"chunk {settings.blobs.chunk_size // 2**20} MiB"
    )
    print(f"write  plain copy        {rate['copy']:8.0f} MB/s")
    print(f"write  copy + fsync      {rate['copy+fsync']:8.0f} MB/s")
    print(f"write  user-space copy   {rate['user copy']:8.0f} MB/s   (4 MiB read/write + fsync)")
    print(
        f"write  blob store        {rate['blob write']:8.0f} MB/s   "
        f"ratio {rate['blob write'] / rate['copy']:.2f} vs copy, "
        f"{rate['blob write'] / rate['copy+fsync']:.2f} vs copy + fsync, "
        f"{rate['blob write'] / rate['user copy']:.2f} vs user-space copy"
    )
    print(f"read   plain read        {rate['read']:8.0f} MB/s")
    print(
        f"read   blob store        {rate['blob read']:8.0f} MB/s   "
        f"ratio {rate['blob read'] / rate['read']:.2f}"
    )
    blob_trip = total / (spent["blob write"] + spent["blob read"]) / 1e6
    plain_trip = total / (spent["copy"] + spent["read"]) / 1e6
    print(
        f"round trip (write + read back): blob store {blob_trip:.0f} MB/s, "
        f"copyfile + read {plain_trip:.0f} MB/s, ratio {blob_trip / plain_trip:.2f} "
        "(target >= 0.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024, help="data to write (MiB)")
    parser.add_argument("--seed", type=int, default=7, help="seed for file sizes and content")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="underlay-bench-") as scratch:
        run(args.total_mib, args.seed, Path(scratch))


if __name__ == "__main__":
    main()

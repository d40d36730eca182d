"""Loader throughput against pyarrow reading the same Parquet files directly, in the same run.

Starts ``underlay up`` on a temporary home (SQLite, local tables folder), writes a table of
``--rows`` rows of numeric columns (an int64 id, ``--features`` float32 features, an int32
label) in ``--files`` appends, so the version has that many Parquet files. Then, in turns,
``--repeat`` times each, best run kept:

- baseline: ``pyarrow.dataset`` over the version's Parquet files, ``to_batches`` of the same
  batch size, every batch's columns touched as NumPy arrays are not (Arrow only);
- ``Client.loader(...).batches()`` through the real server over HTTP on 127.0.0.1 (the row
  groups' Parquet bytes, decoded by pyarrow in the client), without and with shuffle.

Both read the same files and columns and consume the same number of batches of the same size,
and both are warm: the files are in the page cache after the first round (the table was just
written), and every read is timed in turns, best of ``--repeat`` kept.

Target: loader rows/s >= 0.8 x pyarrow's.

    python benchmarks/loader.py --rows 4000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import TOKEN, free_port, serve  # how the other benchmarks start the server

from underlay.client import Client


def table_part(start: int, rows: int, features: int) -> Any:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(start)
    columns: dict[str, Any] = {"id": pa.array(np.arange(start, start + rows, dtype=np.int64))}
    for f in range(features):
        columns[f"f{f}"] = pa.array(rng.standard_normal(rows, dtype=np.float32))
    columns["label"] = pa.array(rng.integers(0, 10, rows, dtype=np.int32))
    return pa.table(columns)


def count(batches: Iterable[Any]) -> int:
    return sum(b.num_rows for b in batches)


def server_cpu(pid: int) -> float:
    """CPU seconds the server process has used (user + system, all threads); 0 off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(read: Callable[[], int], pid: int) -> tuple[float, int, float]:
    """Wall seconds, rows, and CPU seconds of this process and the server together."""
    cpu = time.process_time() + server_cpu(pid)
    start = time.perf_counter()
    rows = read()
    seconds = time.perf_counter() - start
    return seconds, rows, time.process_time() + server_cpu(pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    with tempfile.TemporaryDirectory(prefix="ul-loader-") as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        server = serve(home, port)
        try:
            with Client(f"http://127.0.0.1:{port}", TOKEN, timeout_s=600) as c:
                c.create_project("bench")
                per_file = args.rows // args.files
                for part in range(args.files):
                    c.write_table("bench", "points", table_part(part * per_file, per_file, 8))
                info = c.table_pieces("bench", "points")
                (location,) = (p.parent for p in (home / "tables").glob("*/*/_delta_log"))
                files = DeltaTable(str(location), version=info.version).file_uris()
                assert len(files) == info.files

                def direct() -> int:
                    dataset = pads.dataset(files, format="parquet")
                    return count(dataset.to_batches(batch_size=args.batch_size))

                def ours(shuffle: bool) -> Callable[[], int]:
                    def read() -> int:
                        loader = c.loader(
                            "bench", "points", batch_size=args.batch_size, shuffle=shuffle
                        )
                        return count(loader.batches())

                    return read

                runs: dict[str, list[float]] = {"pyarrow": [], "loader": [], "shuffled": []}
                cpus: dict[str, list[float]] = {name: [] for name in runs}
                reads = {"pyarrow": direct, "loader": ours(False), "shuffled": ours(True)}
                for _ in range(args.repeat):
                    for name, read in reads.items():
                        seconds, rows, cpu = timed(read, server.pid)
                        assert rows == info.rows, (name, rows, info.rows)
                        runs[name].append(seconds)
                        cpus[name].append(cpu)
        finally:
            server.terminate()
            server.wait(30)
    best = {name: info.rows / min(times) for name, times in runs.items()}
    print(
        f"{info.rows:,} rows, {info.files} files, {len(info.pieces)} row groups, "
        f"{2 + args.features} numeric columns, batches of {args.batch_size}"
    )
    for name, label in (
        ("pyarrow", "pyarrow.dataset to_batches"),
        ("loader", "loader over HTTP"),
        ("shuffled", "loader, shuffled"),
    ):
        print(f"{label:28s} {best[name]:14,.0f} rows/s  (best of {args.repeat})")
    print(f"loader / pyarrow rows/s ratio: {best['loader'] / best['pyarrow']:.2f} (target >= 0.8)")
    print(f"shuffled / pyarrow ratio:      {best['shuffled'] / best['pyarrow']:.2f}")
    for name in ("loader", "shuffled"):  # the machine may be shared: round by round too
        rounds = [a / b for a, b in zip(runs["pyarrow"], runs[name], strict=True)]
        print(f"{name} / pyarrow, each round:  " + " ".join(f"{r:.2f}" for r in rounds))
    # CPU seconds (client and server processes together) depend less on what else runs
    least = {name: min(values) for name, values in cpus.items()}
    print(
        "CPU seconds, least of the rounds: "
        + ", ".join(f"{name} {value:.2f}" for name, value in least.items())
        + f"; pyarrow / loader CPU: {least['pyarrow'] / least['loader']:.2f}"
    )


if __name__ == "__main__":
    main()

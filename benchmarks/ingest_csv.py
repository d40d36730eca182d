"""A big CSV through ``underlay tables ingest``: rows/s and the peak memory of both sides.

Generates a seeded CSV of ``--csv-gib`` GiB (default 0.25; ``--csv-gib 5`` for the issue's
figure), written block by block so the generator never holds it, starts ``underlay up`` on a
temporary home (SQLite, local tables root) and runs ``underlay tables ingest`` on it as a
child process, sampling every 50 ms the resident memory (RSS) of the server process and of
the CLI process, each with its children (psutil). Prints rows/s, MiB/s and both peaks.
Target: under 1 GiB peak RSS for 5 GiB of CSV, i.e. memory that does not grow with the input.
``--pii`` adds an email column, so every row is also tokenised on the way in. ``--files N``
splits the CSV into a folder of N files (each with its header) ingested as one version.

    df -h /tmp                                # the CSV, the staged upload and the table
    python benchmarks/ingest_csv.py --csv-gib 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from ingest import TOKEN, free_port, serve  # the same server start as the dataset benchmark

from underlay.client import Client

CATEGORIES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
BLOCK_ROWS = 200_000


def generate(path: Path, gib: float, seed: int, pii: bool) -> int:
    """Write about ``gib`` GiB of CSV to ``path``; returns the number of rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    target = int(gib * 1024**3)
    rows = 0
    with path.open("wb") as out:
        writer = None
        while out.tell() < target:
            n = BLOCK_ROWS
            ids = np.arange(rows, rows + n, dtype=np.int64)
            words = np.array(WORDS)
            note = np.char.add(
                np.char.add(words[rng.integers(0, 8, n)], " "), words[rng.integers(0, 8, n)]
            )
            columns = {
                "id": pa.array(ids),
                "amount": pa.array(rng.uniform(0, 1000, n).round(2)),
                "qty": pa.array(rng.integers(1, 31, n, dtype=np.int64)),
                "category": pa.array(np.array(CATEGORIES)[rng.integers(0, 8, n)]),
                "note": pa.array(note),
            }
            if pii:
                columns["email"] = pa.array(np.char.add(ids.astype(str), "@example.com"))
            block = pa.table(columns)
            if writer is None:
                writer = pacsv.CSVWriter(out, block.schema)
            writer.write_table(block)
            rows += n
        if writer is not None:
            writer.close()
    return rows


class PeakRss:
    """The peak RSS of a process and its children, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._proc = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
                total = 0
                for proc in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += proc.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-gib", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--pii", action="store_true", help="Add an email column (tokenised).")
    parser.add_argument("--files", type=int, default=1, help="Split into a folder of N files.")
    parser.add_argument("--dir", default=None, help="Where the CSV and the home go (a tmp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ul-csv-", dir=args.dir) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        if args.files > 1:
            csv_path = root / "parts"
            csv_path.mkdir()
            parts = [csv_path / f"{i:04d}.csv" for i in range(args.files)]
            rows = sum(
                generate(part, args.csv_gib / args.files, args.seed + i, args.pii)
                for i, part in enumerate(parts)
            )
            size = sum(part.stat().st_size for part in parts)
        else:
            csv_path = root / "big.csv"
            rows = generate(csv_path, args.csv_gib, args.seed, args.pii)
            size = csv_path.stat().st_size
        print(
            f"generated {rows:,} rows, {size / 1024**3:.2f} GiB "
            f"in {time.perf_counter() - start:.0f} s"
        )
        port = free_port()
        home = root / "home"
        server = serve(home, port)
        server_rss = PeakRss(server.pid)
        try:
            env = {
                **os.environ,
                "UNDERLAY_URL": f"http://127.0.0.1:{port}",
                "UNDERLAY_TOKEN": TOKEN,
                "UNDERLAY_HOME": str(root / "cli-home"),
            }
            with Client(env["UNDERLAY_URL"], TOKEN) as c:
                c.create_project("bench")
            at_rest = sum(
                proc.memory_info().rss
                for proc in [psutil.Process(server.pid), *psutil.Process(server.pid).children()]
            )
            start = time.perf_counter()
            cli = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "underlay.cli.main",
                    "tables",
                    "ingest",
                    "events",
                    str(csv_path),
                    "-p",
                    "bench",
                    "--json",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            cli_rss = PeakRss(cli.pid)
            out, err = cli.communicate()
            took = time.perf_counter() - start
            cli_peak = cli_rss.stop()
            if cli.returncode != 0:
                raise SystemExit(f"ingest failed: {err}")
        finally:
            server_peak = server_rss.stop()
            server.terminate()
            server.wait(30)
        assert f'"rows_written": {rows}' in out, out
        if args.files > 1:
            assert f'"files": {args.files}' in out, out
        mib = 1024**2
        print(f"ingested in {took:.1f} s: {rows / took:,.0f} rows/s, {size / mib / took:.1f} MiB/s")
        print(
            f"peak RSS: server {server_peak / mib:.0f} MiB (at rest before the ingest "
            f"{at_rest / mib:.0f} MiB), CLI {cli_peak / mib:.0f} MiB"
        )
        print("target: under 1024 MiB each, whatever the size of the CSV")


if __name__ == "__main__":
    main()

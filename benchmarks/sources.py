"""Database ingest and subject indexing, each against a baseline measured in the same run.

1. **Ingest from a database.** A SQLite file of ``--rows`` orders (id, customer, amount,
   timestamp, note) is loaded with ``Client.ingest_sql`` into a table of a server started
   on a temporary home. The baseline reads the same rows through the same SQLAlchemy
   streaming cursor into Arrow batches and drops them (the read alone: no upload, no Delta
   write). The client's peak memory growth is reported: the rows stream in batches, so it
   stays near a few batches whatever ``--rows`` is.
2. **Subject indexing.** The same Arrow table (``--rows`` rows, ``--subjects`` distinct
   customers) is written to a table without a subject key and to one with, three times
   each; the ratio is the cost of reading the new files' key column and indexing the
   distinct values.

    python benchmarks/sources.py --rows 200000 --subjects 20000
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import TOKEN, free_port, serve

from underlay.client import Client


def make_source(path: Path, rows: int, subjects: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "create table orders (id integer primary key, customer integer, amount real, "
        "placed_at datetime, note text)"
    )
    conn.executemany(
        "insert into orders values (?, ?, ?, ?, ?)",
        (
            (i, i % subjects, i * 0.01, f"2024-01-01 00:{i % 60:02d}:00", f"order {i}")
            for i in range(rows)
        ),
    )
    conn.commit()
    conn.close()


def read_only(url: str, batch_rows: int) -> float:
    from underlay.data.sqlsource import open_sql

    start = time.perf_counter()
    read = open_sql(url, table="orders", batch_rows=batch_rows)
    assert read is not None
    for _ in read.batches:
        pass
    return time.perf_counter() - start


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--subjects", type=int, default=20_000)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    args = parser.parse_args()
    import pyarrow as pa

    with tempfile.TemporaryDirectory() as tmp:
        home, db = Path(tmp) / "home", Path(tmp) / "source.db"
        make_source(db, args.rows, args.subjects)
        url = f"sqlite:///{db}"
        port = free_port()
        server = serve(home, port)
        try:
            with Client(f"http://127.0.0.1:{port}", TOKEN) as c:
                c.create_project("bench")
                before = peak_mib()  # the load first: the baseline must not set the peak
                start = time.perf_counter()
                c.ingest_sql("bench", "orders", url, table="orders", batch_rows=args.batch_rows)
                ingest = time.perf_counter() - start
                growth = peak_mib() - before
                baseline = read_only(url, args.batch_rows)
                print(f"rows: {args.rows:,}, batch rows: {args.batch_rows:,}")
                print(f"read only (baseline): {args.rows / baseline:,.0f} rows/s")
                print(f"ingest_sql:           {args.rows / ingest:,.0f} rows/s")
                print(f"ingest / read time:   {ingest / baseline:.2f}x")
                print(f"client peak memory growth during the load: {growth:.0f} MiB")

                data = pa.table(
                    {
                        "customer": pa.array([i % args.subjects for i in range(args.rows)]),
                        "amount": pa.array([i * 0.01 for i in range(args.rows)]),
                    }
                )
                plain, keyed = [], []
                c.write_table("bench", "plain", data.slice(0, 10))
                c.write_table("bench", "keyed", data.slice(0, 10), subject_key="customer")
                for _ in range(3):
                    for name, times in (("plain", plain), ("keyed", keyed)):
                        start = time.perf_counter()
                        c.write_table("bench", name, data)
                        times.append(time.perf_counter() - start)
                p, k = statistics.median(plain), statistics.median(keyed)
                print(f"append of {args.rows:,} rows, {args.subjects:,} subjects (median of 3):")
                print(f"  no subject key: {p:.2f} s; with one: {k:.2f} s; ratio {k / p:.2f}x")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()

"""ETL pipeline run time and peak memory against the plain SDK calls it replaces, same run.

Starts ``underlay up`` on a temporary home (SQLite, no agent), writes a seeded table of
``--rows`` orders (id, customer, amount, note), then, each in a fresh child process so its
peak resident memory is its own:

* **pipeline**: a pipeline run with the SDK (``run_pipeline``): a SQL step (a filter and a
  computed column, in the client's sandboxed DuckDB) and a Python step (one more column per
  record batch), its output written with ``write_table`` and recorded with its lineage;
* **baseline**: the same work by hand: the server's SQL (``sql``, the whole result as one
  Arrow table in memory), the same column added with pyarrow, then ``write_table``.

It prints each one's seconds, rows/s and peak RSS, and the ratio pipeline/baseline. Target:
time within 2x of the baseline (the pipeline reads the whole source over HTTP and spills each
source and step to a file, where the baseline's query runs beside the data). Peak memory is
printed, not targeted: the pipeline process also imports DuckDB, and the baseline holds its
whole result at once; compare how each grows with ``--rows``.

    python benchmarks/pipelines.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import TOKEN, free_port, serve

QUERY = "select id, customer, amount * 100 as cents, note from orders where amount >= 25"


def child(mode: str, url: str) -> None:
    """Run one side and print its figures as JSON."""
    import resource

    import pyarrow as pa
    import pyarrow.compute as pc

    from underlay.client import Client
    from underlay.data.pipelines import Pipeline, python, sql

    def tag(batches):  # type: ignore[no-untyped-def]
        for batch in batches:
            yield batch.append_column("big", pc.greater(batch.column("cents"), 5000))

    started = time.perf_counter()
    with Client(url, TOKEN) as c:
        if mode == "pipeline":
            spec = Pipeline(
                name="bench",
                sources={"orders": "orders"},
                transforms=[sql("filtered", QUERY), python("tagged", tag)],
                output={"table": "out_pipeline", "mode": "overwrite"},
            )
            record = c.run_pipeline("bench", spec)
            assert record.status == "succeeded", record.error
            rows = record.rows_out
        else:
            table = c.sql("bench", QUERY)
            table = table.append_column("big", pc.greater(table.column("cents"), 5000))
            assert isinstance(table, pa.Table)
            rows = c.write_table("bench", "out_baseline", table, mode="overwrite").rows_written
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_mib": peak_mib}))


def seed(c: object, rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    from underlay.client import Client

    assert isinstance(c, Client)
    c.create_project("bench")
    rng = np.random.default_rng(7)
    chunk = 250_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        table = pa.table(
            {
                "id": pa.array(np.arange(start, start + n)),
                "customer": pa.array(rng.integers(1, 10_000, n)),
                "amount": pa.array(np.round(rng.uniform(0, 100, n), 2)),
                "note": pa.array([f"order {i}" for i in range(start, start + n)]),
            }
        )
        c.write_table("bench", "orders", table, pii={"note": "keep:benchmark data"})


def side(mode: str, url: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--url", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["pipeline", "baseline"])
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url)
        return
    from underlay.client import Client

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = serve(Path(tmp), port)
        url = f"http://127.0.0.1:{port}"
        try:
            with Client(url, TOKEN) as c:
                seed(c, args.rows)
            results = {mode: side(mode, url) for mode in ("baseline", "pipeline")}
        finally:
            server.terminate()
            server.wait(30)
    print(f"{args.rows:,} source rows")
    for mode, r in results.items():
        rate = r["rows"] / r["seconds"]
        print(
            f"  {mode:9} {r['seconds']:7.2f} s  {rate:12,.0f} rows/s out  "
            f"peak {r['peak_mib']:7.1f} MiB  ({int(r['rows']):,} rows written)"
        )
    time_ratio = results["pipeline"]["seconds"] / results["baseline"]["seconds"]
    memory_ratio = results["pipeline"]["peak_mib"] / results["baseline"]["peak_mib"]
    print(f"pipeline/baseline: time {time_ratio:.2f}x (target <= 2), memory {memory_ratio:.2f}x")


if __name__ == "__main__":
    main()

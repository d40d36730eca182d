"""SQL through the platform against DuckDB reading the same Delta table directly, in one run.

Generates a seeded table of ``--rows`` rows (default 10 million: an int64 id, three numeric
columns and a low-cardinality string column), starts ``underlay up`` on a temporary home
(SQLite, local tables root) and ingests it once through the SDK. Each query then runs
``--repeat`` times, alternately, through the platform's SQL path (``Client.sql``: HTTP, the
sandboxed DuckDB of ``underlay.data.sql``, an Arrow IPC stream back) and through an
in-process DuckDB over ``DeltaTable(...).to_pyarrow_dataset()`` of the same table (the DuckDB
delta extension cannot be downloaded here), with the same thread count; the best time of
each counts.
Printed per query and overall (geometric mean): the ratio baseline time / platform time.
Target: >= 0.8. Last, the fixed cost of one platform query (``select 1``: HTTP, auth, audit
entry, a fresh sandboxed DuckDB), which is what the small queries' ratios are made of.

    python benchmarks/sql.py                 # 10 million rows
    python benchmarks/sql.py --rows 1000000  # a quick run
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import free_port, serve  # the same server start as the ingest benchmark

from underlay.client import Client

QUERIES = {
    "group by category": (
        "select category, count(*) as n, sum(amount) as total, avg(qty) as qty "
        "from events group by category order by category"
    ),
    "filter + aggregate": (
        "select count(*) as n, sum(amount) as total from events where amount > 900 and qty < 10"
    ),
    "filter + group by": (
        "select category, max(score) as best from events where id % 7 = 0 "
        "group by category order by category"
    ),
    "narrow range": "select * from events where id between {mid} and {mid} + 999",
    "0.3% of rows out": "select id, amount, category from events where qty = 3 and score < 0.1",
}
CATEGORIES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def generate(rows: int, seed: int) -> object:
    """The table: seeded, the same for every run with the same arguments."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "amount": pa.array(rng.uniform(0, 1000, rows).round(2)),
            "qty": pa.array(rng.integers(1, 31, rows, dtype=np.int64)),
            "score": pa.array(rng.random(rows)),
            "category": pa.array(np.array(CATEGORIES)[rng.integers(0, 8, rows)]),
        }
    )


def best(run: object, repeat: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        rows = run().num_rows  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times), rows


def main() -> None:
    import duckdb
    from deltalake import DeltaTable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads, both sides.")
    args = parser.parse_args()
    table = generate(args.rows, args.seed)
    with tempfile.TemporaryDirectory(prefix="ul-sql-") as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        server = serve(home, port, {"UNDERLAY_DATA__SQL_THREADS": str(args.threads)})
        try:
            with Client(f"http://127.0.0.1:{port}", "ul_bench_" + "0" * 40, timeout_s=3600) as c:
                c.create_project("bench")
                start = time.perf_counter()
                c.write_table("bench", "events", table)
                print(f"{args.rows:,} rows ingested in {time.perf_counter() - start:.1f} s")
                (location,) = (home / "tables").glob("*/*/_delta_log")
                delta = DeltaTable(str(location.parent))
                con = duckdb.connect(config={"threads": args.threads})
                ratios = []
                print(f"{'query':22} {'rows':>9} {'duckdb s':>9} {'platform s':>10} {'ratio':>6}")
                for name, template in QUERIES.items():
                    query = template.format(mid=args.rows // 2)

                    def direct(query: str = query) -> object:
                        con.register("events", delta.to_pyarrow_dataset())
                        return con.sql(query).to_arrow_table()

                    def platform(query: str = query) -> object:
                        return c.sql("bench", query)

                    # alternate the two, so a change in the machine's load hits both alike
                    base_s = ours_s = math.inf
                    for _ in range(args.repeat):
                        once_s, base_rows = best(direct, 1)
                        base_s = min(base_s, once_s)
                        once_s, ours_rows = best(platform, 1)
                        ours_s = min(ours_s, once_s)
                    assert base_rows == ours_rows, (name, base_rows, ours_rows)
                    ratios.append(base_s / ours_s)
                    print(
                        f"{name:22} {ours_rows:>9,} {base_s:>9.3f} {ours_s:>10.3f} "
                        f"{ratios[-1]:>6.2f}"
                    )
                overall = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
                print(f"overall (geometric mean) ratio: {overall:.2f} (target >= 0.8)")
                fixed, _ = best(lambda: c.sql("bench", "select 1 as one"), max(args.repeat, 5))
                print(f"fixed cost of one platform query (select 1): {fixed * 1000:.0f} ms")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()

"""Reading a table as a Ray Dataset (``read_ray``) against the SDK's loader and DuckDB reading the
Delta table directly, in the same run; and writing one (``write_ray``) against ``write_table``.

Starts ``underlay up`` on a temporary home (SQLite, local tables folder) and a Ray cluster on
127.0.0.1 (a head node with ``--cpus`` CPUs: the read tasks run ``--cpus`` at a time), writes
a seeded table of ``--rows`` rows (an int64 id, four float64 columns, a string column) in
``--files`` appends, so the version has at least that many pieces. Then, in turns, ``--repeat``
times each, the best run kept:

- DuckDB: ``select *`` over ``DeltaTable(...).to_pyarrow_dataset()`` of the table's folder, to
  an Arrow table in this process (no server, no authorisation: the floor);
- the loader: ``Client.loader(...).batches()`` through the server, one stream;
- ``read_ray``: ``Client.read_ray(...).materialize()``: one read task per piece, each
  streaming its piece through the server into Ray's object store.

Then the fixed cost of a ``read_ray`` (a table of one row: planning, one task, the object
store), and once each: ``write_table`` of the table as one Arrow stream against ``write_ray`` of the
materialised Dataset (each task stages its blocks as a part, one commit), to a new table.

Printed: rows/s of each and the ratios. On one machine every reader shares its cores with the
server (and Ray's own processes), so the ratio says what the extra hops cost here, not what a
cluster of many machines gains; on a shared machine, say so with the figures.

    python benchmarks/ray_data.py --rows 2000000
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import TOKEN, free_port, serve  # how the other benchmarks start the server

from underlay.client import Client


def part(start: int, rows: int) -> Any:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(start)
    columns: dict[str, Any] = {"id": pa.array(np.arange(start, start + rows, dtype=np.int64))}
    for f in range(4):
        columns[f"x{f}"] = pa.array(rng.standard_normal(rows))
    columns["kind"] = pa.array(np.array(["a", "b", "c", "d"])[rng.integers(0, 4, rows)])
    return pa.table(columns)


def connect_ray(cpus: int, temp: Path) -> Any:
    from underlay.compute.executors.ray_cluster import (
        HOST,
        LocalRayCluster,
        auth_environment,
        import_for_driver,
    )

    cluster = LocalRayCluster(temp)
    cluster.start_head("bench", num_cpus=cpus)
    os.environ.update(auth_environment(cluster.token_path))
    ray = import_for_driver(cluster.address)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # the token settings, if Ray was imported before they were made
    AuthenticationTokenLoader.instance().reset_cache()  # and this cluster's token
    ray.init(
        address=cluster.address, _node_ip_address=HOST, log_to_driver=False, configure_logging=False
    )
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray node")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # a SIGTERM (timeout, Ctrl-C of a parent) runs the clean-up below: no Ray cluster left
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import duckdb
    import ray
    from deltalake import DeltaTable

    per = args.rows // args.files
    with tempfile.TemporaryDirectory(prefix="ul-rd-") as tmp:
        home = Path(tmp) / "home"
        port = free_port()
        server = serve(home, port)
        temp = Path(tempfile.mkdtemp(prefix="ulrb-", dir="/tmp"))  # short: Ray socket paths
        cluster = None
        try:
            with Client(f"http://127.0.0.1:{port}", TOKEN, timeout_s=3600) as c:
                c.create_project("bench")
                for f in range(args.files):
                    c.write_table("bench", "events", part(f * per, per))
                pieces = c.table_pieces("bench", "events")
                print(
                    f"{pieces.rows:,} rows, {len(pieces.pieces)} pieces in {pieces.files} files; "
                    f"Ray node of {args.cpus} CPUs; this machine: {os.cpu_count()} cores"
                )
                cluster = connect_ray(args.cpus, temp)
                (log,) = (home / "tables").glob("*/*/_delta_log")
                con = duckdb.connect()

                def duck() -> int:
                    con.register("events", DeltaTable(str(log.parent)).to_pyarrow_dataset())
                    return int(con.sql("select * from events").to_arrow_table().num_rows)

                def loader() -> int:
                    batches = c.loader("bench", "events", batch_size=65_536).batches()
                    return sum(b.num_rows for b in batches)

                def read_ray() -> int:
                    return int(c.read_ray("bench", "events").materialize().count())

                readers: dict[str, Callable[[], int]] = {
                    "duckdb (direct)": duck,
                    "loader": loader,
                    "read_ray": read_ray,
                }
                best = dict.fromkeys(readers, math.inf)
                for _ in range(args.repeat):  # in turns: a change of load hits all alike
                    for name, read in readers.items():
                        start = time.perf_counter()
                        rows = read()
                        best[name] = min(best[name], time.perf_counter() - start)
                        assert rows == pieces.rows, (name, rows)
                print(f"{'reader':16} {'seconds':>8} {'rows/s':>12}")
                for name, seconds in best.items():
                    print(f"{name:16} {seconds:>8.3f} {pieces.rows / seconds:>12,.0f}")
                print(
                    f"read_ray / loader: {best['loader'] / best['read_ray']:.2f}; "
                    f"read_ray / duckdb: {best['duckdb (direct)'] / best['read_ray']:.2f}; "
                    f"loader / duckdb: {best['duckdb (direct)'] / best['loader']:.2f}"
                )
                c.write_table("bench", "tiny", part(0, 1))
                fixed = math.inf
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    c.read_ray("bench", "tiny").materialize()
                    fixed = min(fixed, time.perf_counter() - start)
                print(f"fixed cost of one read_ray (a table of one row): {fixed:.3f} s")
                whole = c.read_table("bench", "events")
                dataset = c.read_ray("bench", "events").materialize()
                start = time.perf_counter()
                c.write_table("bench", "copy_sdk", whole)
                sdk_s = time.perf_counter() - start
                start = time.perf_counter()
                written = c.write_ray("bench", "copy_ray", dataset)
                ray_s = time.perf_counter() - start
                assert written.rows_written == whole.num_rows
                print(
                    f"write_table {whole.num_rows / sdk_s:,.0f} rows/s, write_ray "
                    f"{whole.num_rows / ray_s:,.0f} rows/s ({sdk_s / ray_s:.2f} of write_table's "
                    f"speed; one version each)"
                )
        finally:
            if cluster is not None:
                ray.shutdown()
                cluster.stop()
            shutil.rmtree(temp, ignore_errors=True)
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()

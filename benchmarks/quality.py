"""The cost of a quality gate against the Delta write it gates, measured in the same run.

Generates ``--rows`` rows (an int64 id, a country code, a float spend and a text SKU; seeded),
writes them as a Delta table with ``deltalake`` (the write every gated version pays anyway),
then evaluates checks over that version exactly as a write does
(:func:`underlay.data.quality.evaluate`, in the SQL sandbox): five checks of the one
aggregate scan (not_null on two columns, range, allowed values, regex, row count), then the
same plus ``unique`` on the id (a query of its own). Each evaluation is the best of three;
the ratio to the write's time is printed (no target set yet: a regex over every row is real
work, and a gate reads the whole version while a write touches only its new rows).

    python benchmarks/quality.py --rows 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from underlay.config import DataSettings
from underlay.data.quality import evaluate, parse_spec

SCAN: list[dict[str, Any]] = [
    {"type": "not_null", "columns": ["id", "country"]},
    {"type": "range", "column": "spend", "min": 0, "max": 1000},
    {"type": "allowed", "column": "country", "values": ["DE", "FR", "NL", "PL"]},
    {"type": "regex", "column": "sku", "pattern": "^[A-Z]{3}-[0-9]+$"},
    {"type": "row_count", "min": 1},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "country": pa.array([("DE", "FR", "NL", "PL")[i % 4] for i in range(rows)]),
            "spend": pa.array([float(i % 500) for i in range(rows)]),
            "sku": pa.array([f"ABC-{i}" for i in range(rows)]),
        }
    )
    with tempfile.TemporaryDirectory() as folder:
        location = str(Path(folder) / "t")
        started = time.perf_counter()
        write_deltalake(location, table)
        write_s = time.perf_counter() - started
        dataset = DeltaTable(location).to_pyarrow_dataset()
        print(f"{rows:,} rows; Delta write: {write_s:.2f} s")
        for label, checks in (
            ("5 checks in one scan", SCAN),
            ("the same + unique(id)", [*SCAN, {"type": "unique", "column": "id"}]),
        ):
            spec = parse_spec(checks)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                report = evaluate(spec, dataset, "t", DataSettings())
                best = min(best, time.perf_counter() - started)
            assert report.passed, report.to_dict()
            print(f"{label}: {best:.2f} s, {best / write_s:.2f} x the write")


if __name__ == "__main__":
    main()

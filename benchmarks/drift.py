"""Data drift against Evidently, measured in the same run, each in a process of its own.

Generates a reference and a current window of ``--rows`` rows each (seeded): 20 numeric
columns (normal, log-normal, uniform, Poisson counts with many ties) and 5 categorical ones
(3 to 40 categories); 5 of them shifted in the current window (3 numeric, 2 categorical). Both
windows are written to Parquet; then

* **underlay**: :func:`underlay.monitoring.drift.compute_drift` with its defaults (normalised
  Wasserstein >= 0.1 for numeric columns, Jensen-Shannon >= 0.1 for categorical ones), on
  the ``pyarrow`` tables;
* **Evidently** 0.7: ``Report([DataDriftPreset()]).run(...)`` on the pandas frames, with the
  same column kinds (its defaults above 1,000 rows are the same two tests and thresholds),
  flags read from the snapshot.

Each side runs in a fresh interpreter that loads the data first, then times the comparison (the
best of ``--repeat`` runs) and reads its peak resident memory (``ru_maxrss``); "extra" is the
peak over the loaded data. Prints both, the ratios, and whether both flagged the same
columns. Target (issue 14): >= 15x Evidently's speed at 1M rows with the same flagged
columns, under half its peak memory.

Evidently's interpreter comes from ``UNDERLAY_BENCH_EVIDENTLY_PYTHON`` (default
``.venv-evidently/bin/python``); without one, only underlay runs. ``make bench-tools``
creates it, or by hand::

    python3.11 -m venv .venv-evidently
    .venv-evidently/bin/pip install 'evidently>=0.7' 'pandas<3'

(evidently 0.7.23 imports a pandas helper that pandas 3 removed.)

    python benchmarks/drift.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMERIC = 20
CATEGORICAL = 5
SHIFTED = {"num_00", "num_07", "num_13", "cat_01", "cat_03"}

UNDERLAY_SIDE = r"""
import json, resource, sys, time
import pyarrow.parquet as pq
from underlay.monitoring.drift import DriftOptions, compute_drift
ref, cur = pq.read_table(sys.argv[1]), pq.read_table(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = float("inf")
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    report = compute_drift(ref, cur, DriftOptions(workers=int(sys.argv[4])))
    seconds = min(seconds, time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kb": peak, "extra_kb": peak - base,
                  "flagged": sorted(report.flagged)}))
"""

EVIDENTLY_SIDE = r"""
import json, resource, sys, time
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
numeric = [c for c in ref.columns if c.startswith("num_")]
categorical = [c for c in ref.columns if c.startswith("cat_")]
definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = float("inf")
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    metrics = snapshot.dict()["metrics"]
    seconds = min(seconds, time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
flagged = []
for m in metrics:
    config = m.get("config", {})
    if not config.get("type", "").endswith("ValueDrift"):
        continue
    value, threshold = float(m["value"]), float(config["threshold"])
    p_value_test = "p_value" in config.get("method", "")
    if (value < threshold) if p_value_test else (value >= threshold):
        flagged.append(config["column"])
print(json.dumps({"seconds": seconds, "peak_kb": peak, "extra_kb": peak - base,
                  "flagged": sorted(flagged)}))
"""


def window(rows: int, seed: int, shifted: bool) -> pa.Table:
    """One window; ``shifted`` moves the columns in :data:`SHIFTED`."""
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    for i in range(NUMERIC):
        name = f"num_{i:02d}"
        move = shifted and name in SHIFTED
        shape = i % 4
        if shape == 0:
            cols[name] = rng.normal(10.0 + (0.4 if move else 0.0), 2.0, rows)
        elif shape == 1:
            cols[name] = rng.lognormal(0.0, 0.8 * (1.4 if move else 1.0), rows)
        elif shape == 2:
            cols[name] = rng.uniform(0.0, 100.0 + (30.0 if move else 0.0), rows)
        else:
            cols[name] = rng.poisson(4.0 * (1.3 if move else 1.0), rows).astype(np.int64)
    for i in range(CATEGORICAL):
        name = f"cat_{i:02d}"
        size = (3, 8, 15, 25, 40)[i]
        weights = np.linspace(1.0, 2.0, size)
        if shifted and name in SHIFTED:
            weights = weights[::-1] ** 2
        weights /= weights.sum()
        labels = np.array([f"{name}_v{k}" for k in range(size)])
        cols[name] = pa.array(labels[rng.choice(size, rows, p=weights)])
    return pa.table(cols)


def run_side(python: str, script: str, paths: tuple[Path, Path], *extra: int) -> Any:
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [python, "-c", script, str(paths[0]), str(paths[1]), *map(str, extra)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def evidently_python() -> str | None:
    python = os.environ.get("UNDERLAY_BENCH_EVIDENTLY_PYTHON", ".venv-evidently/bin/python")
    if Path(python).exists():
        return python
    print(f"no Evidently interpreter at {python}; see this file's docstring. underlay only.")
    return None


def show(name: str, r: dict[str, Any]) -> None:
    print(
        f"{name:<10} {r['seconds']:8.2f} s   peak {r['peak_kb'] / 1024:7.0f} MiB   "
        f"extra {r['extra_kb'] / 1024:7.0f} MiB   flagged {', '.join(r['flagged'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs each")
    parser.add_argument("--workers", type=int, default=1, help="underlay's column threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref, cur = Path(tmp) / "reference.parquet", Path(tmp) / "current.parquet"
        pq.write_table(window(args.rows, args.seed, False), ref)
        pq.write_table(window(args.rows, args.seed + 1, True), cur)
        print(
            f"{args.rows:,} rows x {NUMERIC + CATEGORICAL} columns "
            f"({NUMERIC} numeric, {CATEGORICAL} categorical), shifted: {sorted(SHIFTED)}"
        )
        ours = run_side(sys.executable, UNDERLAY_SIDE, (ref, cur), args.repeat, args.workers)
        show("underlay", ours)
        python = evidently_python()
        if python is None:
            return
        theirs = run_side(python, EVIDENTLY_SIDE, (ref, cur), args.repeat)
        show("evidently", theirs)
    print(
        f"speed: {theirs['seconds'] / ours['seconds']:.1f}x Evidently   "
        f"peak memory: {ours['peak_kb'] / theirs['peak_kb']:.2f} of Evidently's   "
        f"extra memory: {ours['extra_kb'] / max(theirs['extra_kb'], 1):.2f} of Evidently's   "
        f"same flagged columns: {'yes' if ours['flagged'] == theirs['flagged'] else 'NO'}   "
        f"expected: {'yes' if ours['flagged'] == sorted(SHIFTED) else 'NO'}"
    )


if __name__ == "__main__":
    main()

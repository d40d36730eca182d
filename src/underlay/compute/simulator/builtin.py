"""Loaders for the built-in traces (read their READMEs for source, licence and attribution).

The Philly-derived files ship inside the package, gzip-compressed, in ``traces/philly-derived``
next to this module, so ``underlay simulate --trace philly`` works after a plain install. The
openb files are read from ``--traces-dir`` / ``UNDERLAY_TRACES_DIR`` or ``../shared/data/traces``
of the repository. A folder given explicitly wins for both; a file in it may be ``.csv`` or
``.csv.gz``.

**philly** (Microsoft Philly 2017, as cut by Gavel): 15,264 arrivals in 15 virtual clusters
(VCs), each VC's clock starting at its own first job; the VCs are replayed side by side from
time 0 and each VC is a project. The files have no durations, so each job's duration is
sampled, seeded, by its GPU count:

1. with probability *q* (the share of all Philly jobs shorter than one hour in
   ``philly_runtime.csv``, 76.3%) the job is short: its duration is drawn from the runtimes
   below one hour in that file (a 0 s runtime counts as 1 s);
2. otherwise it is drawn from ``philly_duration_gpus_ge1h.csv`` among the jobs with the same
   GPU count class (the largest of 1, 2, 4, 8 not above the job's GPU count).

**philly-runtime** is the same arrivals with every duration drawn from all of
``philly_runtime.csv`` (0 s counts as 1 s), whatever the GPU count: the durations then have
that file's distribution and mean (about 14,600 s), where **philly**'s are about twice as
long on average, because its pool of jobs of one hour or more averages twice the runtime
file's. The link between GPU count and duration is lost.

A job of more than 8 GPUs is a gang of ``w`` workers with ``n / w`` GPUs each, ``w`` the
smallest divisor of ``n`` that keeps a worker within one 8-GPU node. The quota weights are
the VC sizes in ``philly_vc_nodes.csv`` (the 4 VCs it lacks get no guarantee and only borrow).

**openb** (Alibaba PAI 2023, FGD paper): 8,152 pods that arrive in creation order and hold
their resources until the end (lifetimes are not used; the FGD paper's simulator shuffles the
order and uses the GPU nodes only: ``benchmarks/openb_fgd.py`` replays them that way), on the
1,523 openb nodes, so the replay measures how many GPUs each policy leaves
unallocatable as the cluster fills. ``gpu_milli`` below 1000 is a fraction of one GPU; the
QoS class is the priority (Guaranteed 3, LS 2, Burstable 1, BE 0), and only Burstable and BE
pods are preemptible (latency-sensitive services are not); ``gpu_spec`` is empty in this
file, so any GPU type is accepted.
"""

from __future__ import annotations

import csv
import gzip
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from underlay.compute.scheduler.snapshot import Request, Workload
from underlay.compute.simulator.trace import SHOWN_SKIPS, SkippedRow, Trace, TraceJob
from underlay.errors import InvalidInput, NotFound

BUILTIN = ("philly", "philly-runtime", "openb")
PHILLY_DIR = "philly-derived"
OPENB_DIR = "alibaba-gpu-v2023-openb"
PHILLY_CLUSTER = "32x8xP100"
"""The default Philly cluster: 256 GPUs, a load at which FIFO queues (docs/scheduling.md)."""
OPENB_CLUSTER = "openb"
QOS_PRIORITY = {"Guaranteed": 3, "LS": 2, "Burstable": 1, "BE": 0}
PREEMPTIBLE_QOS = ("Burstable", "BE")
SHORT_S = 3600.0
PACKAGED_TRACES = Path(__file__).resolve().parent / "traces"
"""The traces shipped as package data (only the Philly-derived files)."""


def default_traces_dir() -> Path:
    """``../shared/data/traces`` next to the repository this package was installed from."""
    repo = Path(__file__).resolve().parents[4]
    return repo.parent / "shared" / "data" / "traces"


def traces_dir(explicit: Path | None = None) -> Path:
    """The folder with the built-in traces; NotFound says how to point at it."""
    folder = explicit or default_traces_dir()
    if not folder.is_dir():
        raise NotFound(
            f"trace folder {folder} not found; set UNDERLAY_TRACES_DIR or pass --traces-dir "
            f"to the folder that holds {PHILLY_DIR}/ and {OPENB_DIR}/"
        )
    return folder


def philly_dir(explicit: Path | None = None) -> Path:
    """The folder that holds ``philly-derived/``: the explicit one, else the packaged copy."""
    return traces_dir(explicit) if explicit is not None else PACKAGED_TRACES


def _open_text(path: Path) -> AbstractContextManager[Any]:
    """``path`` as text, or ``path.gz`` decompressed when only that exists."""
    if path.is_file():
        return path.open(newline="", encoding="utf-8-sig")
    packed = path.with_name(path.name + ".gz")
    if packed.is_file():
        return gzip.open(packed, "rt", newline="", encoding="utf-8-sig")
    raise NotFound(f"trace file {path} not found")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        end = 1  # the header
        for row in reader:
            yield end + 1, row  # the line the row starts on, quoted newlines counted
            end = reader.line_num


class _Skips:
    def __init__(self) -> None:
        self.shown: list[SkippedRow] = []
        self.count = 0

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.shown) < SHOWN_SKIPS:
            self.shown.append(SkippedRow(line, reason))


def load_philly(folder: Path, seed: int = 0, runtime_only: bool = False) -> Trace:
    """The Philly-derived trace with durations sampled as the module docstring says
    (``runtime_only``: all from ``philly_runtime.csv``, as **philly-runtime**)."""
    base = folder / PHILLY_DIR
    runtimes = [float(r["runtime_s"]) for _, r in _rows(base / "philly_runtime.csv")]
    every = [max(1.0, r) for r in runtimes]
    short = [max(1.0, r) for r in runtimes if r < SHORT_S]
    q = len(short) / len(runtimes)
    by_class: dict[int, list[float]] = {}
    for _, r in _rows(base / "philly_duration_gpus_ge1h.csv"):
        by_class.setdefault(int(r["num_gpus"]), []).append(float(r["duration_s"]))
    classes = sorted(by_class)
    rng = random.Random(seed)
    skips = _Skips()
    jobs: list[TraceJob] = []
    for line, r in _rows(base / "philly_vc_arrivals.csv"):
        try:
            n = int(r["num_gpus"])
            arrival = float(r["arrival_s"])
            if n < 1 or arrival < 0:
                raise ValueError("num_gpus must be >= 1 and arrival_s >= 0")
        except (TypeError, ValueError) as exc:
            skips.add(line, str(exc))
            continue
        if runtime_only:
            duration = rng.choice(every)
        elif rng.random() < q:
            duration = rng.choice(short)
        else:
            cls = max(c for c in classes if c <= n) if n >= classes[0] else classes[0]
            duration = rng.choice(by_class[cls])
        workers = _workers(n)
        request = Request(gpus=n // workers, gpu_type=None)
        w = Workload(
            f"{r['vc']}-{r['job_index']}", r["vc"], request, gang=workers, submit_time=arrival
        )
        jobs.append(TraceJob(w, duration))
    weights = tuple((r["vc"], float(r["node_num"])) for _, r in _rows(base / "philly_vc_nodes.csv"))
    return Trace.of(
        "philly-runtime" if runtime_only else "philly",
        jobs,
        skipped=tuple(skips.shown),
        skipped_count=skips.count,
        quota_weights=weights,
        default_cluster=PHILLY_CLUSTER,
    )


def _workers(gpus: int, per_node: int = 8) -> int:
    workers = -(-gpus // per_node)
    while gpus % workers:
        workers += 1
    return workers


def load_openb(folder: Path) -> Trace:
    """The openb pods as an arrival sequence that holds its resources (FGD's replay)."""
    skips = _Skips()
    jobs: list[TraceJob] = []
    for line, r in _rows(folder / OPENB_DIR / "openb_pod_list_default.csv"):
        try:
            gpus = int(r["num_gpu"])
            milli = int(r["gpu_milli"] or 0)
            qos = r["qos"]
            if qos not in QOS_PRIORITY:
                raise ValueError(f"unknown qos {qos!r}")
            fraction = gpus == 1 and 0 < milli < 1000
            request = Request(
                cpu_milli=int(r["cpu_milli"]),
                memory_mib=int(r["memory_mib"]),
                gpus=0 if fraction else gpus,
                gpu_milli=milli if fraction else 0,
                gpu_type=r["gpu_spec"] or None,
            )
            created = float(r["creation_time"])
        except (TypeError, ValueError) as exc:
            skips.add(line, str(exc))
            continue
        w = Workload(
            r["name"],
            "openb",
            request,
            priority=QOS_PRIORITY[qos],
            submit_time=created,
            preemptible=qos in PREEMPTIBLE_QOS,
        )
        jobs.append(TraceJob(w, None))
    return Trace.of(
        "openb",
        jobs,
        skipped=tuple(skips.shown),
        skipped_count=skips.count,
        default_cluster=OPENB_CLUSTER,
    )


def openb_nodes_path(folder: Path, gpu_only: bool = False) -> Path:
    name = "openb_node_list_gpu_node.csv" if gpu_only else "openb_node_list_all_node.csv"
    return folder / OPENB_DIR / name


def load_builtin(name: str, folder: Path | None = None, seed: int = 0) -> Trace:
    """A built-in trace by name."""
    if name in ("philly", "philly-runtime"):
        return load_philly(philly_dir(folder), seed, runtime_only=name == "philly-runtime")
    if name == "openb":
        return load_openb(traces_dir(folder))
    raise InvalidInput(f"unknown built-in trace {name!r}; built-in traces: {', '.join(BUILTIN)}")

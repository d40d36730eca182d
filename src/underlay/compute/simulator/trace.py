"""Job traces: the in-memory form, and our own plain CSV format for replaying any cluster.

A :class:`Trace` is a list of :class:`TraceJob` (arrival, duration, request) plus what the
loader had to skip. The duration is known to the simulator only; the policy never sees it.

The CSV format (documented in ``docs/scheduling.md``) has a header row; ``id``, ``submit_s``
and ``duration_s`` are required, every other column is optional::

    id,project,submit_s,duration_s,gpus,gpu_milli,gpu_type,gang,cpu_milli,memory_mib,priority,deferrable
    train-1,vision,0,3600,8,,A100,2,32000,262144,1,false
    nb-7,nlp,12.5,600,,250,,,2000,8192,0,true

Services add the optional constraint columns ``app``, ``max_per_node`` (at most that many
workers of the app on one node), ``preemptible`` (``true``/``false``; default true) and
``node_selector`` (``key=value`` labels joined with ``;``, all required on the node)::

    id,submit_s,duration_s,gpu_milli,gang,app,max_per_node,preemptible,node_selector
    web-1,0,,500,4,web,2,false,zone=a;gpu=a100

An empty ``duration_s`` means the job runs until the end of the replay. Rows that cannot be
read (a non-number, a negative time, a repeated id, an unknown flag) are skipped, counted and
reported with the line each starts on (a quoted field may span lines), so one bad line does
not lose a day-long trace; a missing, unknown or repeated column, or a file with no usable
row, is an :class:`~underlay.errors.InvalidInput`. The file is UTF-8, with or without a byte
order mark.
A request no node could satisfy is not a malformed row: the policy rejects it with a reason.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from underlay.compute.scheduler.constraints import parse_labels
from underlay.compute.scheduler.snapshot import Request, Workload
from underlay.errors import InvalidInput

COLUMNS = (
    "id",
    "project",
    "submit_s",
    "duration_s",
    "gpus",
    "gpu_milli",
    "gpu_type",
    "gang",
    "cpu_milli",
    "memory_mib",
    "priority",
    "deferrable",
    "app",
    "max_per_node",
    "preemptible",
    "node_selector",
)
REQUIRED = ("id", "submit_s", "duration_s")


class _Reader(Protocol):
    """A ``csv.reader``: rows, and the number of physical lines read so far."""

    @property
    def line_num(self) -> int: ...

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


SHOWN_SKIPS = 20


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace: a workload that arrives at ``submit_time`` and needs
    ``duration_s`` seconds of running (None: it runs until the replay ends)."""

    workload: Workload
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class SkippedRow:
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class Trace:
    """Jobs sorted by arrival; ``quota_weights`` (project -> weight) split each accelerator
    type's capacity into guarantees when the cluster is built, if the trace has them."""

    name: str
    jobs: tuple[TraceJob, ...]
    skipped: tuple[SkippedRow, ...] = ()
    skipped_count: int = 0
    quota_weights: tuple[tuple[str, float], ...] = ()
    default_cluster: str | None = None

    @classmethod
    def of(
        cls,
        name: str,
        jobs: Iterable[TraceJob],
        skipped: tuple[SkippedRow, ...] = (),
        skipped_count: int = 0,
        quota_weights: tuple[tuple[str, float], ...] = (),
        default_cluster: str | None = None,
    ) -> Trace:
        """A trace with ``jobs`` sorted by arrival (then id, so ties are deterministic)."""
        ordered = sorted(jobs, key=lambda j: (j.workload.submit_time, j.workload.id))
        return cls(name, tuple(ordered), skipped, skipped_count, quota_weights, default_cluster)


def load_csv(path: Path) -> Trace:
    """Read a trace in our CSV format (see the module docstring)."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"cannot read trace file {path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InvalidInput(f"{path}: empty file; expected a header row: {','.join(COLUMNS)}")
        names = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise InvalidInput(
                f"{path}: missing column(s) {', '.join(missing)}; "
                f"expected a header row with at least {','.join(REQUIRED)}"
            )
        repeated = sorted({h for h in names if names.count(h) > 1})
        if repeated:
            raise InvalidInput(
                f"{path}: column(s) {', '.join(repeated)} appear more than once in the header; "
                "each column may appear once"
            )
        unknown = [h for h in names if h not in COLUMNS]
        if unknown:
            raise InvalidInput(
                f"{path}: unknown column(s) {', '.join(unknown)}; known: {','.join(COLUMNS)}"
            )
        try:
            jobs, skipped, count = _rows(reader, names)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}: not a readable CSV file: {exc}") from exc
    if not jobs:
        detail = f" (first problem: line {skipped[0].line}: {skipped[0].reason})" if skipped else ""
        raise InvalidInput(f"{path}: no usable job rows{detail}")
    return Trace.of(path.name, jobs, skipped=tuple(skipped), skipped_count=count)


def numbered(reader: _Reader) -> Iterator[tuple[int, list[str]]]:
    """Rows with the line each starts on: a quoted field with a newline spans several lines,
    so the count comes from the lines the reader consumed, not from the number of rows."""
    end = reader.line_num
    for row in reader:
        yield end + 1, row
        end = reader.line_num


def _rows(reader: _Reader, names: list[str]) -> tuple[list[TraceJob], list[SkippedRow], int]:
    jobs: list[TraceJob] = []
    skipped: list[SkippedRow] = []
    count = 0
    seen: set[str] = set()
    for line, row in numbered(reader):
        if not any(cell.strip() for cell in row):
            continue
        try:
            if len(row) != len(names):
                raise ValueError(f"has {len(row)} fields, the header has {len(names)}")
            job = parse_row(dict(zip(names, (c.strip() for c in row), strict=True)))
            if job.workload.id in seen:
                raise ValueError(f"repeats job id {job.workload.id!r}")
        except ValueError as exc:
            count += 1
            if len(skipped) < SHOWN_SKIPS:
                skipped.append(SkippedRow(line, str(exc)))
            continue
        seen.add(job.workload.id)
        jobs.append(job)
    return jobs, skipped, count


def parse_row(row: dict[str, str]) -> TraceJob:
    """One CSV row as a job; ValueError says what is wrong with it."""
    wid = row.get("id", "")
    if not wid:
        raise ValueError("has an empty id")
    submit = _number(row, "submit_s", 0.0)
    raw = row.get("duration_s", "")
    duration = None if raw == "" else _number(row, "duration_s", 0.0)
    request = Request(
        cpu_milli=_int(row, "cpu_milli"),
        memory_mib=_int(row, "memory_mib"),
        gpus=_int(row, "gpus"),
        gpu_milli=_int(row, "gpu_milli"),
        gpu_type=row.get("gpu_type") or None,
    )
    gang = _int(row, "gang", 1)
    if gang < 1:
        raise ValueError(f"gang must be at least 1, got {gang}")
    workload = Workload(
        wid,
        row.get("project") or "default",
        request,
        gang=gang,
        priority=_int(row, "priority", 0, allow_negative=True),
        deferrable=_flag(row, "deferrable", False),
        submit_time=submit,
        preemptible=_flag(row, "preemptible", True),
        app=row.get("app") or None,
        max_per_node=_max_per_node(row),
        node_selector=parse_labels(row.get("node_selector", "").split(";")),
    )
    return TraceJob(workload, duration)


def _number(row: dict[str, str], name: str, default: float) -> float:
    raw = row.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {raw!r}")
    return value


def _int(row: dict[str, str], name: str, default: int = 0, allow_negative: bool = False) -> int:
    raw = row.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} {raw!r} is not a whole number") from None
    if value < 0 and not allow_negative:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _max_per_node(row: dict[str, str]) -> int | None:
    if not row.get("max_per_node"):
        return None
    value = _int(row, "max_per_node")
    if value < 1:
        raise ValueError(f"max_per_node must be at least 1, got {value}")
    return value


def _flag(row: dict[str, str], name: str, default: bool) -> bool:
    raw = row.get(name, "")
    value = raw.lower()
    if value == "":
        return default
    if value in ("0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{name} {raw!r} is not true/false")

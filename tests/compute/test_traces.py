"""Trace loaders: our CSV format with its bad rows, and the real Philly and openb traces."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from underlay.compute.simulator.builtin import (
    _workers,
    default_traces_dir,
    load_builtin,
    load_openb,
    load_philly,
    philly_dir,
    traces_dir,
)
from underlay.compute.simulator.trace import load_csv
from underlay.errors import InvalidInput, NotFound

TRACES = default_traces_dir()
needs_traces = pytest.mark.skipif(
    not TRACES.is_dir(), reason=f"the real traces are not at {TRACES} (see docs/scheduling.md)"
)

HEADER = "id,project,submit_s,duration_s,gpus,gpu_milli,gpu_type,gang,priority,deferrable\n"


def _csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(header + body)
    return path


def test_our_csv_format_reads_every_column(tmp_path: Path):
    trace = load_csv(_csv(tmp_path, "j1,vision,12.5,600,,250,T4,,3,true\nj0,nlp,0,,8,,,2,,\n"))
    first, second = trace.jobs  # sorted by arrival
    assert first.workload.id == "j0" and first.duration_s is None
    assert first.workload.request.gpus == 8 and first.workload.gang == 2
    assert second.workload.request.gpu_milli == 250
    assert second.workload.request.gpu_type == "T4"
    assert second.workload.priority == 3 and second.workload.deferrable
    assert second.duration_s == 600


def test_malformed_rows_are_skipped_and_counted_with_their_line_numbers(tmp_path: Path):
    body = (
        "ok,p,0,10,1,,,,,\n"
        "bad1,p,soon,10,1,,,,,\n"
        "bad2,p,0,-5,1,,,,,\n"
        "ok,p,1,10,1,,,,,\n"
        "bad4,p,0,10,1,,,0,,\n"
        "bad5,p,0,10,1,,,,,maybe\n"
        "short,p,0\n"
        "\n"
        "ok2,p,2,10,1.5,,,,,\n"
    )
    trace = load_csv(_csv(tmp_path, body))
    assert [j.workload.id for j in trace.jobs] == ["ok"]
    assert trace.skipped_count == 7
    assert [(s.line, s.reason) for s in trace.skipped] == [
        (3, "submit_s 'soon' is not a number"),
        (4, "duration_s must be a finite number >= 0, got '-5'"),
        (5, "repeats job id 'ok'"),
        (6, "gang must be at least 1, got 0"),
        (7, "deferrable 'maybe' is not true/false"),
        (8, "has 3 fields, the header has 10"),
        (10, "gpus '1.5' is not a whole number"),
    ]


def test_a_utf8_byte_order_mark_is_read_as_part_of_nothing(tmp_path: Path):
    path = tmp_path / "excel.csv"
    path.write_bytes("id,submit_s,duration_s,gpus\na,0,10,1\n".encode("utf-8-sig"))
    trace = load_csv(path)
    assert [j.workload.id for j in trace.jobs] == ["a"] and trace.skipped_count == 0


def test_line_numbers_stay_right_after_a_quoted_field_with_a_newline(tmp_path: Path):
    body = (
        'ok,"two\nlines",0,10,1,,,,,\n'  # lines 2-3
        "bad,p,soon,10,1,,,,,\n"  # line 4
        '"multi\nline\nid",p,later,10,1,,,,,\n'  # lines 5-7
        "bad2,p,0,10,x,,,,,\n"  # line 8
    )
    trace = load_csv(_csv(tmp_path, body))
    assert [j.workload.project for j in trace.jobs] == ["two\nlines"]
    assert [(s.line, s.reason) for s in trace.skipped] == [
        (4, "submit_s 'soon' is not a number"),
        (5, "submit_s 'later' is not a number"),
        (8, "gpus 'x' is not a whole number"),
    ]


@pytest.mark.parametrize(
    ("header", "body", "match"),
    [
        ("", "", r"empty file; expected a header row"),
        (
            "id,submit_s,duration_s,gpus,gpus\n",
            "a,0,1,1,2\n",
            r"column\(s\) gpus appear more than once in the header",
        ),
        ("id,project,gpus\n", "a,p,1\n", r"missing column\(s\) submit_s, duration_s"),
        ("id,submit_s,duration_s,colour\n", "a,0,1,red\n", r"unknown column\(s\) colour"),
        ("id,submit_s,duration_s\n", "a,x,1\n", r"no usable job rows \(first problem: line 2"),
    ],
)
def test_files_that_cannot_be_a_trace_are_invalid_input(tmp_path: Path, header, body, match):
    with pytest.raises(InvalidInput, match=match):
        load_csv(_csv(tmp_path, body, header))


def test_a_missing_file_is_invalid_input(tmp_path: Path):
    with pytest.raises(InvalidInput, match="cannot read trace file"):
        load_csv(tmp_path / "absent.csv")


def test_a_missing_traces_folder_says_how_to_point_at_it(tmp_path: Path):
    with pytest.raises(NotFound, match="set UNDERLAY_TRACES_DIR or pass --traces-dir"):
        traces_dir(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("gpus", "workers"), [(1, 1), (8, 1), (12, 2), (16, 2), (20, 4), (24, 3), (64, 8), (7, 1)]
)
def test_wide_philly_jobs_become_gangs_of_at_most_one_node_each(gpus, workers):
    assert _workers(gpus) == workers
    assert gpus % workers == 0 and gpus // workers <= 8


@needs_traces
def test_philly_loads_every_arrival_with_seeded_durations():
    a = load_philly(TRACES, seed=1)
    b = load_philly(TRACES, seed=1)
    c = load_philly(TRACES, seed=2)
    assert len(a.jobs) == 15264 and a.skipped_count == 0
    assert [j.duration_s for j in a.jobs] == [j.duration_s for j in b.jobs]
    assert [j.duration_s for j in a.jobs] != [j.duration_s for j in c.jobs]
    assert len({j.workload.project for j in a.jobs}) == 15
    assert all(j.duration_s is not None and j.duration_s >= 1 for j in a.jobs)
    short = sum(1 for j in a.jobs if (j.duration_s or 0) < 3600) / len(a.jobs)
    assert 0.74 < short < 0.79  # the 76.3% of Philly jobs shorter than an hour
    widest = max(a.jobs, key=lambda j: j.workload.gpu_share)
    assert (widest.workload.gang, widest.workload.request.gpus) == (8, 8)
    assert dict(a.quota_weights)["6214e9"] == 64.0


def test_philly_runtime_draws_every_duration_from_the_runtime_file():
    folder = philly_dir(None)
    with gzip.open(folder / "philly-derived" / "philly_runtime.csv.gz", "rt") as f:
        runtimes = [max(1.0, float(r["runtime_s"])) for r in csv.DictReader(f)]
    matched = load_builtin("philly-runtime", seed=0)
    sampled = load_builtin("philly", seed=0)
    assert matched.name == "philly-runtime"
    assert [j.workload for j in matched.jobs] == [j.workload for j in sampled.jobs]
    durations = [j.duration_s or 0.0 for j in matched.jobs]
    assert set(durations) <= set(runtimes)
    mean = sum(runtimes) / len(runtimes)
    assert sum(durations) / len(durations) == pytest.approx(mean, rel=0.05)
    # philly's own sampling is about twice as long on average (docs/scheduling.md)
    assert sum(j.duration_s or 0.0 for j in sampled.jobs) / len(sampled.jobs) > 1.8 * mean


@needs_traces
def test_openb_loads_pods_with_fractions_and_qos_classes():
    trace = load_openb(TRACES)
    assert len(trace.jobs) == 8152 and trace.skipped_count == 0
    assert all(j.duration_s is None for j in trace.jobs)
    fractions = [j for j in trace.jobs if j.workload.request.gpu_milli]
    assert len(fractions) == 3078
    assert all(0 < j.workload.request.gpu_milli < 1000 for j in fractions)
    cpu_only = [j for j in trace.jobs if not j.workload.gpu_share]
    assert len(cpu_only) == 1088
    assert {j.workload.priority for j in trace.jobs} == {0, 1, 2, 3}
    services = [j for j in trace.jobs if j.workload.priority >= 2]
    assert not any(j.workload.preemptible for j in services)


def test_constraint_columns_are_read_and_optional(tmp_path: Path):
    header = "id,submit_s,duration_s,gpu_milli,gang,app,max_per_node,preemptible,node_selector\n"
    body = "web-1,0,,500,4,web,2,false,zone=a; gpu=a100\nbatch-1,5,60,250,1,,,,\n"
    trace = load_csv(_csv(tmp_path, body, header))
    web, batch = (j.workload for j in trace.jobs)
    assert (web.app, web.max_per_node, web.preemptible) == ("web", 2, False)
    assert web.node_selector == ("gpu=a100", "zone=a")
    assert (batch.app, batch.max_per_node, batch.preemptible, batch.node_selector) == (
        None,
        None,
        True,
        (),
    )


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("2,maybe,", "preemptible 'maybe' is not true/false"),
        ("0,,", "max_per_node must be at least 1, got 0"),
        ("1,,zone", "label 'zone' is not key=value"),
    ],
)
def test_bad_constraint_cells_skip_the_row_with_a_reason(tmp_path: Path, cell: str, reason: str):
    header = "id,submit_s,duration_s,max_per_node,preemptible,node_selector\n"
    trace = load_csv(_csv(tmp_path, f"ok,0,60,,,\nbad,0,60,{cell}\n", header))
    assert [j.workload.id for j in trace.jobs] == ["ok"]
    assert trace.skipped[0].reason == reason

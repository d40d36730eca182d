"""What the server takes from an evaluation job's log: its own last result line, checked."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from underlay.compute import logs
from underlay.errors import InvalidInput
from underlay.monitoring.loop_eval import RESULT_PREFIX, collect, read_report, slice_file


def _line(**fields: object) -> bytes:
    return f"{RESULT_PREFIX}{json.dumps(fields)}\n".encode()


def test_the_last_result_line_of_the_newest_attempt_is_the_report(tmp_path: Path) -> None:
    logs.append(tmp_path, 7, 1, _line(champion=0.1, challenger=0.2, rows=9))
    noise = b"x" * 200_000 + b"\n"  # more than the tail the server reads
    good = _line(champion=0.5, challenger=0.75, rows=40)
    logs.append(tmp_path, 7, 2, _line(champion=0.0, challenger=1.0, rows=40) + noise + good)
    report = read_report(tmp_path, 7)
    assert (report.champion, report.challenger, report.rows) == (0.5, 0.75, 40)
    # another job's log is not this one's
    with pytest.raises(InvalidInput, match="job 8 succeeded but reported no scores"):
        read_report(tmp_path, 8)


@pytest.mark.parametrize(
    "last",
    [
        _line(champion=float("nan"), challenger=1.0, rows=3),
        f'{RESULT_PREFIX}{{"champion": 1e999, "challenger": 0, "rows": 3}}\n'.encode(),
        _line(champion="high", challenger=1.0, rows=3),
        _line(champion=0.1, challenger=1.0, rows=-1),
        _line(champion=0.1, challenger=1.0, rows=3, wins=True),
        f"{RESULT_PREFIX}not json\n".encode(),
    ],
)
def test_a_report_that_is_not_two_finite_scores_is_refused(tmp_path: Path, last: bytes) -> None:
    logs.append(tmp_path, 3, 1, last)
    with pytest.raises(InvalidInput, match="job 3 reported scores that are not"):
        read_report(tmp_path, 3)


def test_the_slice_holds_only_the_labels_and_the_model_inputs() -> None:
    rows = pa.table(
        {"ts": [1, 2], "request_id": ["a", "b"], "in_x": [0.5, 1.5], "label_value": [0.0, 1.0]}
    )
    read = pa.ipc.open_file(pa.BufferReader(slice_file(rows))).read_all()
    assert read.column_names == ["label_value", "in_x"]
    assert read.column("in_x").to_pylist() == [0.5, 1.5]


def test_the_server_judges_the_scores_and_checks_the_row_count(tmp_path: Path) -> None:
    evaluation = {"job": 5, "rows": 40, "metric": "accuracy", "margin": 0.1, "data": "d"}
    logs.append(tmp_path, 5, 1, _line(champion=0.5, challenger=0.65, rows=40))
    result = collect(tmp_path, evaluation, "churn", 3)
    assert result["wins"] is True and result["gain"] == 0.15 and result["job"] == 5
    assert result["reason"].startswith("challenger churn@3 wins: accuracy 0.65 vs champion 0.5")
    logs.append(tmp_path, 6, 1, _line(champion=0.5, challenger=0.55, rows=40))
    assert collect(tmp_path, {**evaluation, "job": 6}, "churn", 3)["wins"] is False
    logs.append(tmp_path, 9, 1, _line(champion=0.0, challenger=1.0, rows=2))
    with pytest.raises(InvalidInput, match="scored 2 rows, not the 40 of the held-out slice"):
        collect(tmp_path, {**evaluation, "job": 9}, "churn", 3)

"""The prediction logger's buffer and background writer, with a plain list as the writer:
sampling, batching by size and by time, a full buffer, a failing writer."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from underlay.errors import InvalidInput
from underlay.serving.predlog import (
    PredictionLogger,
    build_table,
    feedback_table,
    predictions_table,
)


class Collect:
    """A writer that keeps what it gets; ``gate`` (when set) holds each write until opened."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.tables: list[pa.Table] = []
        self.gate = gate
        self.wrote = threading.Event()

    def __call__(self, table: pa.Table) -> None:
        if self.gate is not None:
            assert self.gate.wait(30)
        self.tables.append(table)
        self.wrote.set()

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)


def _inputs(n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.arange(n, dtype=np.float64), "city": np.array(["Oslo"] * n, dtype=object)}


def test_rows_are_written_with_their_request_and_metadata() -> None:
    out = Collect()
    logger = PredictionLogger(out, sample_rate=1.0, deployment="web", model="churn")
    assert logger.record("r1", _inputs(2), {"label": np.array([0, 1])}, 3.5, 2, now=10.0)
    records = [{"x": 1.5, "city": "Bergen"}]
    assert logger.record("r2", records, [1], 1.0, 3, now=11.0, arm="canary")
    assert logger.flush() == 3
    (table,) = out.tables
    rows = table.to_pylist()
    assert [(r["request_id"], r["row"], r["model_version"], r["arm"]) for r in rows] == [
        ("r1", 0, 2, "stable"),
        ("r1", 1, 2, "stable"),
        ("r2", 0, 3, "canary"),
    ]
    assert [r["in_x"] for r in rows] == [0.0, 1.0, 1.5]
    assert [r["in_city"] for r in rows] == ["Oslo", "Oslo", "Bergen"]
    assert [r["out_label"] for r in rows] == [0, 1, None]
    assert [r["out_prediction"] for r in rows] == [None, None, 1]
    assert rows[0]["latency_ms"] == 3.5 and rows[0]["model"] == "churn"
    assert rows[0]["deployment"] == "web"
    assert rows[2]["ts"].timestamp() == 11.0
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert logger.stats()["logged_rows"] == 3


def test_a_tensor_input_becomes_a_list_column() -> None:
    out = Collect()
    logger = PredictionLogger(out, sample_rate=1.0, deployment="d")
    logger.record("r", {"pixels": np.ones((2, 3), np.float32)}, {"y": np.zeros(2)}, 1, 1, 0.0)
    logger.flush()
    assert out.tables[0].column("in_pixels").to_pylist() == [[1.0] * 3, [1.0] * 3]


def test_sampling_follows_the_rate_and_the_callers_draw() -> None:
    out = Collect()
    logger = PredictionLogger(out, sample_rate=0.25, deployment="d", seed=7)
    kept = sum(logger.record(str(i), _inputs(), [0], 1, 1, 0.0) for i in range(8000))
    assert abs(kept - 2000) < 6 * (8000 * 0.25 * 0.75) ** 0.5
    assert logger.record("a", _inputs(), [0], 1, 1, 0.0, u=0.2499)
    assert not logger.record("b", _inputs(), [0], 1, 1, 0.0, u=0.25)
    stats = logger.stats()
    assert stats["seen_requests"] == 8002 and stats["sampled_requests"] == kept + 1
    none = PredictionLogger(out, sample_rate=0.0, deployment="d")
    assert not none.record("c", _inputs(), [0], 1, 1, 0.0, u=0.0)


def test_the_background_thread_writes_by_size_and_by_time() -> None:
    out = Collect()
    logger = PredictionLogger(
        out, sample_rate=1.0, deployment="d", batch_rows=3, flush_interval_s=3600
    )
    logger.start()
    try:
        logger.record("a", _inputs(2), [0, 0], 1, 1, 0.0)
        assert not out.wrote.wait(0.2)  # 2 of 3 rows: no write yet
        logger.record("b", _inputs(1), [0], 1, 1, 0.0)
        assert out.wrote.wait(30)  # the third row wakes the writer
        assert out.rows == 3
    finally:
        logger.close()
    timed = Collect()
    logger = PredictionLogger(timed, sample_rate=1.0, deployment="d", flush_interval_s=0.05)
    logger.start()
    try:
        logger.record("c", _inputs(1), [0], 1, 1, 0.0)
        assert timed.wrote.wait(30)  # one row, written when the interval passes
    finally:
        logger.close()


def test_a_full_buffer_drops_and_counts_and_never_blocks_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    out = Collect(gate)
    logger = PredictionLogger(out, sample_rate=1.0, deployment="d", batch_rows=2, max_buffer_rows=4)
    logger.start()
    try:
        results = [logger.record(str(i), _inputs(1), [0], 1, 1, 0.0) for i in range(4)]
        # the writer took (at most) the first batch and waits at the gate; the rest fill up
        results += [logger.record(str(i), _inputs(1), [0], 1, 1, 0.0) for i in range(4, 40)]
        stats = logger.stats()
        assert stats["dropped_requests"] >= 40 - 4 - 4
        assert stats["dropped_requests"] == results.count(False)
        assert stats["dropped_rows"] == stats["dropped_requests"]
    finally:
        gate.set()
        logger.close()
    assert out.rows == results.count(True)
    assert logger.stats()["logged_rows"] == out.rows
    assert "sampled requests dropped so far" in caplog.text


def test_a_failing_writer_is_counted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    def broken(table: pa.Table) -> None:
        raise OSError("disk full")

    logger = PredictionLogger(broken, sample_rate=1.0, deployment="d")
    assert logger.record("a", _inputs(3), [0, 0, 0], 1, 1, 0.0)
    assert logger.flush() == 0
    stats = logger.stats()
    assert stats["failed_rows"] == 3 and stats["logged_rows"] == 0
    assert stats["last_error"] == "OSError: disk full"
    assert "3 rows could not be written: OSError: disk full" in caplog.text


def test_a_request_that_cannot_be_logged_fails_only_its_batch() -> None:
    out = Collect()
    logger = PredictionLogger(out, sample_rate=1.0, deployment="d")
    assert logger.record("a", {"x": np.zeros(2)}, {"y": np.zeros(3)}, 1, 1, 0.0)  # 2 vs 3 rows
    assert not logger.record("b", {"x": object()}, [0], 1, 1, 0.0)  # no length: dropped
    assert logger.flush() == 0
    assert "out_y has 3 rows, the request 2" in logger.stats()["last_error"]
    assert logger.stats()["dropped_requests"] == 1


def test_build_table_fills_columns_a_request_lacks() -> None:
    out = Collect()
    logger = PredictionLogger(out, sample_rate=1.0, deployment="d")
    logger.record("a", {"x": np.zeros(1)}, [0], 1, 1, 0.0)
    logger.record("b", {"x": np.zeros(1), "z": np.ones(2)[:1]}, [1], 1, 2, 0.0)
    logger.flush()
    assert out.tables[0].column("in_z").to_pylist() == [None, 1.0]
    assert build_table([], "d").num_rows == 0


def test_table_names_fit_and_stay_distinct() -> None:
    assert predictions_table("web") == "web_predictions"
    assert feedback_table("web") == "web_feedback"
    long_a, long_b = "a" * 63, "a" * 62 + "b"
    assert len(predictions_table(long_a)) == 63 == len(feedback_table(long_b))
    assert predictions_table(long_a) != predictions_table(long_b)


@pytest.mark.parametrize("options", [{"sample_rate": 1.5}, {"sample_rate": 0.5, "batch_rows": 0}])
def test_bad_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        PredictionLogger(Collect(), deployment="d", **options)  # type: ignore[arg-type]


def test_close_without_waiting_leaves_the_last_write_to_the_thread() -> None:
    gate = threading.Event()
    out = Collect(gate)
    logger = PredictionLogger(out, sample_rate=1.0, deployment="d", flush_interval_s=3600)
    logger.start()
    assert logger.record("a", _inputs(2), [0, 0], 1, 1, 0.0)
    logger.close(wait=False)  # returns while the write waits at the gate
    assert out.rows == 0
    assert not logger.record("late", _inputs(1), [0], 1, 1, 0.0)  # closed: dropped, counted
    gate.set()
    assert out.wrote.wait(30)
    assert out.rows == 2
    assert logger.stats()["dropped_requests"] == 1

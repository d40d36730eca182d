"""The dynamic batcher on a real event loop, with a model function that records its batches."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from underlay.errors import InvalidInput, Unavailable, UnderlayError
from underlay.serving.batcher import Batcher
from underlay.serving.stats import DeploymentStats

Arrays = dict[str, np.ndarray[Any, Any]]


class Model:
    """Doubles ``x``; records each batch's row count; can hold batches until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[int] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()

    async def __call__(self, inputs: Arrays) -> Arrays:
        self.batches.append(len(inputs["x"]))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            if (inputs["x"] < 0).any():
                raise ValueError("the model cannot take negative x")
            return {"y": inputs["x"] * 2, "id": inputs["x"].astype(np.int64)}
        finally:
            self.running -= 1


def _req(*values: float) -> Arrays:
    return {"x": np.array(values, dtype=np.float64)}


async def _until(predicate: Any) -> None:
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_an_idle_batcher_sends_at_once_and_a_busy_one_coalesces_up_to_max_batch() -> None:
    async def main() -> None:
        model = Model(hold=True)
        stats = DeploymentStats()
        batcher = Batcher(model, max_batch=8, max_wait_ms=60_000, stats=stats)
        first = asyncio.ensure_future(batcher.submit(_req(0)))
        await _until(lambda: model.batches == [1])  # no waiting for company when idle
        rest = [asyncio.ensure_future(batcher.submit(_req(i))) for i in range(1, 11)]
        # 8 rows fill a batch without waiting out the 60 s; the 2 left wait for more company
        await _until(lambda: model.batches == [1, 8])
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [r["y"].tolist() for r in results] == [[2.0 * i] for i in range(11)]
        assert model.batches == [1, 8, 2]
        snap = stats.snapshot()["batches"]
        assert (snap["count"], snap["rows"]) == (3, 11)
        await batcher.close()

    asyncio.run(main())


def test_a_busy_batcher_sends_a_partial_batch_after_max_wait() -> None:
    async def main() -> None:
        model = Model(hold=True)
        batcher = Batcher(model, max_batch=100, max_wait_ms=1)
        first = asyncio.ensure_future(batcher.submit(_req(0)))
        await _until(lambda: model.batches == [1])
        rest = [asyncio.ensure_future(batcher.submit(_req(i))) for i in (1, 2, 3)]
        while model.batches == [1]:  # the first batch is still held: max_wait sends the next
            await asyncio.sleep(0.001)
        assert model.batches == [1, 3]
        model.gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    asyncio.run(main())


def test_multi_row_requests_are_split_back_and_an_oversized_one_runs_alone() -> None:
    async def main() -> None:
        model = Model(hold=True)
        batcher = Batcher(model, max_batch=4, max_wait_ms=60_000, max_concurrency=1)
        first = asyncio.ensure_future(batcher.submit(_req(0)))
        await _until(lambda: model.batches == [1])
        a = asyncio.ensure_future(batcher.submit(_req(1, 2)))
        big = asyncio.ensure_future(batcher.submit(_req(*range(10, 16))))
        c = asyncio.ensure_future(batcher.submit(_req(3, 4)))
        await asyncio.sleep(0)
        model.gate.set()
        results = await asyncio.gather(first, a, big, c)
        assert results[1]["y"].tolist() == [2.0, 4.0]
        assert results[2]["id"].tolist() == list(range(10, 16))
        assert results[3]["y"].tolist() == [6.0, 8.0]
        assert model.batches == [1, 2, 6, 2]  # arrival order kept; never more than one running
        assert model.most_running == 1
        await batcher.close()

    asyncio.run(main())


def test_an_error_fails_only_the_requests_of_its_batch() -> None:
    async def main() -> None:
        model = Model(hold=True)
        batcher = Batcher(model, max_batch=3, max_wait_ms=60_000)
        first = asyncio.ensure_future(batcher.submit(_req(0)))
        await _until(lambda: model.batches == [1])
        bad = [asyncio.ensure_future(batcher.submit(_req(v))) for v in (1, -1, 2)]
        await _until(lambda: model.batches == [1, 3])
        good = [asyncio.ensure_future(batcher.submit(_req(v))) for v in (5, 6, 7)]
        await _until(lambda: model.batches == [1, 3, 3])
        model.gate.set()
        results = await asyncio.gather(first, *bad, *good, return_exceptions=True)
        assert isinstance(results[0], dict)
        assert all(isinstance(r, ValueError) for r in results[1:4])
        assert [r["y"].tolist() for r in results[4:] if isinstance(r, dict)] == [
            [10.0],
            [12.0],
            [14.0],
        ]
        await batcher.close()

    asyncio.run(main())


def test_a_model_returning_the_wrong_row_count_fails_its_batch() -> None:
    async def short(inputs: Arrays) -> Arrays:
        return {"y": inputs["x"][:1]}

    async def main() -> None:
        batcher = Batcher(short, max_batch=8, max_wait_ms=0)
        with pytest.raises(UnderlayError, match="returned 1 rows of output 'y' for a batch of 2"):
            await batcher.submit(_req(1, 2))
        with pytest.raises(InvalidInput, match="same, non-zero number of rows"):
            await batcher.submit({"x": np.zeros(2), "z": np.zeros(3)})
        await batcher.close()

    asyncio.run(main())


def test_close_drains_queued_and_running_requests_then_refuses_new_ones() -> None:
    async def main() -> None:
        model = Model(hold=True)
        batcher = Batcher(model, max_batch=2, max_wait_ms=60_000, max_concurrency=1)
        pending = [asyncio.ensure_future(batcher.submit(_req(i))) for i in range(7)]
        await _until(lambda: model.batches == [2])  # all queued before the collector woke
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        assert not closing.done()
        with pytest.raises(Unavailable, match="shutting down"):
            await batcher.submit(_req(9))
        model.gate.set()
        await closing
        assert all(p.done() for p in pending)
        assert [p.result()["y"].tolist() for p in pending] == [[2.0 * i] for i in range(7)]
        assert sum(model.batches) == 7

    asyncio.run(main())


def test_a_caller_that_went_away_is_skipped() -> None:
    async def main() -> None:
        model = Model(hold=True)
        batcher = Batcher(model, max_batch=8, max_wait_ms=60_000, max_concurrency=1)
        first = asyncio.ensure_future(batcher.submit(_req(0)))
        await _until(lambda: model.batches == [1])
        gone = asyncio.ensure_future(batcher.submit(_req(1)))
        kept = asyncio.ensure_future(batcher.submit(_req(2)))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        assert (await kept)["y"].tolist() == [4.0]
        await first
        assert model.batches == [1, 1]
        await batcher.close()

    asyncio.run(main())


def test_settings_are_checked() -> None:
    async def run(inputs: Arrays) -> Arrays:
        return inputs

    with pytest.raises(InvalidInput, match="max_batch"):
        Batcher(run, max_batch=0, max_wait_ms=1)

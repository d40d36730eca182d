"""Faults and bad input: a server killed and restarted mid-run (every point arrives exactly
once), duplicate batches, and each rule of docs/ml.md, on the client and on the server."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

import underlay
from tests.cli.conftest import ServerProcess
from tests.conftest import ADMIN_TOKEN
from underlay.client import Client
from underlay.errors import Conflict, InvalidInput
from underlay.ml.rules import MAX_METRIC_KEYS


@pytest.fixture
def project(admin: Client) -> str:
    admin.create_project("p")
    return "p"


def _batch(batch_id: str, keys: list[str], key: list[int], step: list[int], value: list[float]):  # type: ignore[no-untyped-def]
    return {
        "batch_id": batch_id,
        "metrics": {
            "keys": keys,
            "key": key,
            "step": step,
            "value": value,
            "timestamp": [1_700_000_000_000] * len(key),
        },
    }


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run_every_point_arrives_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServerProcess(home).start(ready_within_s=120)
    port = server.port
    try:
        admin = Client(server.url, ADMIN_TOKEN)
        admin.create_project("p")
        run = underlay.start_run(
            "p", "crash", client=admin, flush_interval_s=0.01, record_environment=False
        )
        run.batch_points = 200
        for i in range(3000):
            run.log(step=i, loss=1.0 / (i + 1))
        server.kill()  # whatever batch was in flight: committed or not, its answer is lost
        for i in range(3000, 6000):  # logging returns at once while the server is down
            run.log(step=i, loss=1.0 / (i + 1))
        server = ServerProcess(home, port=port).start(ready_within_s=120)
        run.end()
        assert run.retries > 0
        history = admin.metric_history("p", run.id, "loss")
        assert history.step == list(range(6000))
        assert history.value[5999] == pytest.approx(1 / 6000)
        info = admin.read_run("p", run.id)
        assert info.status == "finished" and info.metrics["loss"].step == 5999
        admin.close()
    finally:
        server.stop()


def test_a_batch_sent_twice_is_written_once(admin: Client, project: str) -> None:
    run = admin.create_run(project, "e")
    body = _batch("retry-0001", ["a"], [0, 0], [0, 1], [1.0, 2.0])
    first = admin.log_batch(project, run.id, body)
    again = admin.log_batch(project, run.id, body)
    assert (first.duplicate, first.points) == (False, 2)
    assert (again.duplicate, again.points) == (True, 2)
    assert admin.metric_history(project, run.id, "a").step == [0, 1]


def test_bounded_buffer_blocks_and_never_drops(admin: Client, project: str) -> None:
    """With a tiny buffer, log() waits for the sender instead of dropping points."""
    with underlay.start_run(project, "e", client=admin, max_buffer=10) as run:
        run.batch_points = 5
        for i in range(500):
            run.log(step=i, x=float(i))
    assert admin.metric_history(project, run.id, "x").step == list(range(500))


def test_client_side_rules_raise_at_once(admin: Client, project: str) -> None:
    with underlay.start_run(project, "e", client=admin, record_environment=False) as run:
        for bad in (math.nan, math.inf, -math.inf, "abc", None):
            with pytest.raises(InvalidInput, match=r"not finite|not a number"):
                run.log(step=0, x=bad)  # type: ignore[arg-type]
        for key in ("", "a b", "é", "x" * 251, "-lead", "a;b"):
            with pytest.raises(InvalidInput, match=r"key .* is not allowed"):
                run.log_metrics({key: 1.0}, step=0)
        run.log(step=5, x=1.0)
        with pytest.raises(Conflict, match="step 5 does not follow the last step logged"):
            run.log(step=5, x=2.0)
        with pytest.raises(Conflict, match="step 4 does not follow"):
            run.log(step=4, x=2.0)
        run.log(x=3.0)  # no step: the next one (6)
        run.log_params({"lr": 0.1})
        run.log_params({"lr": "0.1"})  # the same value again: fine
        with pytest.raises(Conflict, match=r"param 'lr' .* is '0.1'; it cannot change to '0.2'"):
            run.log_params({"lr": 0.2})
        run.log_metrics({f"k{i}": 1.0 for i in range(MAX_METRIC_KEYS - 1)}, step=0)
        with pytest.raises(InvalidInput, match=f"at most {MAX_METRIC_KEYS} distinct"):
            run.log(step=1, one_too_many=1.0)
    history = admin.metric_history(project, run.id, "x")
    assert history.step == [5, 6] and history.value == [1.0, 3.0]
    assert admin.read_run(project, run.id).params == {"lr": "0.1"}


def test_server_side_rules(server, admin: Client, project: str) -> None:  # type: ignore[no-untyped-def]
    import httpx

    run = admin.create_run(project, "e", params={"lr": "0.1"})
    admin.log_batch(project, run.id, _batch("ok-000001", ["a"], [0], [3], [1.0]))
    with pytest.raises(Conflict, match="step 3 does not follow the last step logged") as back:
        admin.log_batch(project, run.id, _batch("back-00001", ["a"], [0], [3], [1.0]))
    assert back.value.extra["last_step"] == 3
    with pytest.raises(Conflict, match="step 2 does not follow"):
        admin.log_batch(project, run.id, _batch("back-00002", ["a"], [0, 0], [5, 2], [1.0, 1.0]))
    with pytest.raises(InvalidInput, match="key 'a b' is not allowed"):
        admin.log_batch(project, run.id, _batch("key-000001", ["a b"], [0], [0], [1.0]))
    with pytest.raises(Conflict, match=r"param 'lr' of run .* is '0.1'; it cannot change") as p:
        admin.log_batch(project, run.id, {"batch_id": "param-0001", "params": {"lr": "0.2"}})
    assert (p.value.extra["old_value"], p.value.extra["new_value"]) == ("0.1", "0.2")
    too_many = [f"k{i}" for i in range(MAX_METRIC_KEYS + 1)]
    with pytest.raises(InvalidInput, match=f"at most {MAX_METRIC_KEYS} distinct metric keys"):
        admin.log_batch(
            project,
            run.id,
            _batch(
                "keys-00001",
                too_many,
                list(range(len(too_many))),
                [0] * len(too_many),
                [1.0] * len(too_many),
            ),
        )
    # NaN and infinities: JSON has no such numbers, but Python's encoder writes them
    for word in ("NaN", "Infinity", "-Infinity"):
        body = (
            '{"batch_id": "nan-000001", "metrics": {"keys": ["a"], "key": [0], "step": [9], '
            f'"value": [{word}], "timestamp": [1]}}}}'
        )
        response = httpx.post(
            f"{server.url}/api/v1/projects/{project}/runs/{run.id}/log",
            content=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        assert response.status_code in (400, 422), response.text
    # nothing of the refused batches was written: one point, one param
    assert admin.metric_history(project, run.id, "a").step == [3]
    info = admin.read_run(project, run.id)
    assert info.params == {"lr": "0.1"} and list(info.metrics) == ["a"]


def test_logging_from_two_threads(admin: Client, project: str) -> None:
    with underlay.start_run(project, "e", client=admin, record_environment=False) as run:
        threads = [
            threading.Thread(
                target=lambda k=k: [run.log(step=i, **{k: float(i)}) for i in range(300)]
            )
            for k in ("a", "b")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for key in ("a", "b"):
        assert admin.metric_history(project, run.id, key).step == list(range(300))

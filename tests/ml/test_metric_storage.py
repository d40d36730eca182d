"""Metric points stored in chunks, on SQLite and PostgreSQL: what goes in comes back exactly,
in step order, whatever the batches looked like; the rules still hold per point; a batch too
large for the server is split by the SDK; histories travel as JSON or Arrow; and migration
0019 packs the points stored before it (and unpacks them on the way down)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text

import underlay
from tests.conftest import ADMIN_TOKEN, LiveServer
from underlay.client import Client
from underlay.config import Settings
from underlay.errors import Conflict
from underlay.store import Database, Scope


@pytest.fixture
def project(admin: Client) -> str:
    admin.create_project("p")
    return "p"


def _body(keys: list[str], points: list[tuple[int, int, float]]) -> dict[str, object]:
    return {
        "batch_id": secrets.token_hex(8),
        "metrics": {
            "keys": keys,
            "key": [k for k, _, _ in points],
            "step": [s for _, s, _ in points],
            "value": [v for _, _, v in points],
            "timestamp": [1_700_000_000_000 + s for _, s, _ in points],
        },
    }


def test_columns_and_steps_logged_every_way_read_back_exactly(admin: Client, project: str) -> None:
    values = [1.0 / (i + 3) for i in range(25_000)]  # no short decimal form: exact or not
    with underlay.start_run(project, "e", client=admin) as run:
        run.batch_points = 7_000  # batches that cut columns in the middle
        run.log_batch("a", values)
        for i in range(100):
            run.log(step=25_000 + i, a=float(i))
            run.log(b=-float(i))  # steps 0, 1, 2, ...
        run.log_batch("b", [0.5, 0.25], steps=[200, 300])
        run.log_batch("a", values[:10])  # steps follow on from the last one
    a = admin.metric_history(project, run.id, "a")
    assert a.step == list(range(25_110)) and a.total == 25_110
    assert a.value == values + [float(i) for i in range(100)] + values[:10]
    b = admin.metric_history(project, run.id, "b")
    assert b.step == [*range(100), 200, 300]
    assert b.value == [-float(i) for i in range(100)] + [0.5, 0.25]
    assert admin.read_run(project, run.id).metrics["a"].step == 25_109


def test_interleaved_keys_of_a_batch_are_checked_in_the_batchs_order(
    admin: Client, project: str
) -> None:
    run = admin.create_run(project, "e")
    admin.log_batch(project, run.id, _body(["x", "y"], [(0, 5, 1.0), (1, 5, 2.0)]))
    # x: 6, 7 fine then 7 again (position 4); y: 6 then 4 (position 3): y's comes first
    bad = [(0, 6, 0.0), (1, 6, 0.0), (0, 7, 0.0), (1, 4, 0.0), (0, 7, 0.0)]
    with pytest.raises(Conflict, match=r"metric 'y': step 4 does not follow .* \(6\)"):
        admin.log_batch(project, run.id, _body(["x", "y"], bad))
    with pytest.raises(Conflict, match=r"metric 'x': step 5 does not follow .* \(5\)"):
        admin.log_batch(project, run.id, _body(["x"], [(0, 5, 0.0)]))
    admin.log_batch(project, run.id, _body(["y", "x"], [(1, 6, 3.0), (0, 6, 4.0), (1, 9, 5.0)]))
    x = admin.metric_history(project, run.id, "x")
    assert (x.step, x.value) == ([5, 6, 9], [1.0, 3.0, 5.0])  # nothing of the refused batch
    assert admin.metric_history(project, run.id, "y").value == [2.0, 4.0]


def test_downsampling_keeps_evenly_spaced_points_first_and_last(
    admin: Client, project: str
) -> None:
    with underlay.start_run(project, "e", client=admin) as run:
        run.log_batch("m", [float(i) for i in range(1001)])
    for wanted in (1, 2, 3, 7, 100, 1000, 5000):
        got = admin.metric_history(project, run.id, "m", max_points=wanted)
        last = 1000
        expected = (
            [last]
            if wanted == 1
            else sorted({round(i * last / (wanted - 1)) for i in range(wanted)})
            if wanted < 1001
            else list(range(1001))
        )
        assert got.step == expected and got.total == 1001


def test_a_history_comes_as_json_or_as_arrow(
    server: LiveServer, admin: Client, project: str
) -> None:
    import pyarrow as pa

    with underlay.start_run(project, "e", client=admin) as run:
        run.log_batch("m", [0.1, 0.2, 0.30000000000000004])
    url = f"{server.url}/api/v1/projects/{project}/runs/{run.id}/metrics/m"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    plain = httpx.get(url, headers=auth).json()
    assert plain["value"] == [0.1, 0.2, 0.30000000000000004] and plain["step"] == [0, 1, 2]
    arrow_type = "application/vnd.apache.arrow.stream"
    answer = httpx.get(url, headers={**auth, "Accept": arrow_type})
    assert answer.headers["content-type"] == arrow_type
    table = pa.ipc.open_stream(answer.content).read_all()
    assert table.column("value").to_pylist() == plain["value"]
    assert table.column("timestamp").to_pylist() == plain["timestamp"]
    assert table.schema.metadata[b"key"] == b"m" and table.schema.metadata[b"total"] == b"3"


@pytest.fixture
def small_body_server(settings: Settings) -> Iterator[LiveServer]:
    settings.admin_token = ADMIN_TOKEN
    settings.server.max_json_body = 100_000  # about 2,500 points a batch
    live = LiveServer(settings).start()
    try:
        yield live
    finally:
        live.stop()


def test_a_batch_too_large_for_the_server_is_sent_in_halves(
    small_body_server: LiveServer,
) -> None:
    with Client(small_body_server.url, ADMIN_TOKEN) as admin:
        admin.create_project("p")
        values = [1.0 / (i + 7) for i in range(12_000)]
        with underlay.start_run("p", "e", client=admin) as run:
            run.log_params({"lr": 0.1})
            run.log_batch("m", values)
        assert run.batch_points < 20_000 and run.points_sent == 12_000
        history = admin.metric_history("p", run.id, "m")
        assert history.value == values and history.step == list(range(12_000))
        assert admin.read_run("p", run.id).params == {"lr": "0.1"}


def test_0019_packs_the_points_stored_before_it_and_unpacks_them_again(db: Database) -> None:
    """Points stored one row each (before 0019) come out of the upgrade as chunks with the
    same steps, values and timestamps, in step order; a downgrade restores the rows."""
    from alembic import command

    from underlay.ml.metrics import read_history

    cfg = db.alembic_config()
    command.downgrade(cfg, "0017")
    with db.engine.begin() as conn:
        for statement in (
            "INSERT INTO projects (id, name, description, created_at) "
            "VALUES (1, 'p', '', '2026-01-01')",
            "INSERT INTO experiments (id, project_id, name, description, created_at) "
            "VALUES (1, 1, 'e', '', '2026-01-01')",
            "INSERT INTO runs (id, project_id, experiment_id, name, status, environment, "
            "error, started_at) VALUES (1, 1, 1, '', 'running', '', '', '2026-01-01')",
        ):
            conn.execute(text(statement))
        rows = [
            {"k": k, "s": s, "v": s / 7 + (k == "b"), "t": 1000 + s}
            for k in "ab"
            for s in (3, 1, 2)
        ]
        conn.execute(
            text(
                "INSERT INTO metrics (run_id, key, step, value, timestamp, project_id) "
                "VALUES (1, :k, :s, :v, :t, 1)"
            ),
            rows,
        )
    db.migrate()
    with db.session(Scope.everything()) as session:
        a = read_history(session, 1, 1, "a")
        b = read_history(session, 1, 1, "b")
    assert a.steps.tolist() == [1, 2, 3] and a.values.tolist() == [1 / 7, 2 / 7, 3 / 7]
    assert a.timestamps.tolist() == [1001, 1002, 1003]
    assert b.values.tolist() == [1 + 1 / 7, 1 + 2 / 7, 1 + 3 / 7]
    command.downgrade(cfg, "0017")
    with db.engine.connect() as conn:
        back = conn.execute(
            text("SELECT key, step, value, timestamp FROM metrics ORDER BY key, step")
        ).all()
    assert [tuple(r) for r in back] == sorted((r["k"], r["s"], r["v"], r["t"]) for r in rows)
    db.migrate()

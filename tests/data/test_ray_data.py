"""Tables as Ray Datasets on a real Ray cluster of this machine (a head and a worker node, every
address on 127.0.0.1), against a real server: read_ray and write_ray go through the API with
the caller's token, the read is pinned, and a write is one version or nothing.

One Ray cluster, one server and one table per module (starting Ray costs seconds).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer
from underlay.config import Settings, ensure_home
from underlay.data.pipelines import Output, Pipeline, python, sql
from underlay.errors import InvalidInput, NotFound

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None:
    pytest.skip("Ray Data is not installed (pip install 'underlay[ray]')", allow_module_level=True)
pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    # Ray Data's own DataContext sets its deprecated fields when it is made (Ray 2.60)
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

import ray  # noqa: E402
import ray.data  # noqa: E402
from ray.data.expressions import col  # noqa: E402

from underlay.compute.executors.ray_cluster import (  # noqa: E402
    HOST,
    LocalRayCluster,
    auth_environment,
    import_for_driver,
)

PROJECT = "etl"
ROWS = 200_000
WRITES = 4  # one Parquet file per write: the big table has at least this many pieces
PINNED = f"events@{WRITES - 1}"  # the tests read this version (the first one adds a row)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    temp = Path(tempfile.mkdtemp(prefix="urd-", dir="/tmp"))  # short: Ray socket paths
    local = LocalRayCluster(temp)
    saved = {name: os.environ.get(name) for name in auth_environment(local.token_path)}
    pids: set[int] = set()
    try:
        local.start_head("ray-head")
        local.add_node("ray-worker")
        os.environ.update(auth_environment(local.token_path))  # this process is a driver
        import_for_driver(local.address)
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray was imported before the token settings were made
        # and this cluster's token: Ray keeps the first it read in a process, another
        # cluster's when another test module of this pytest worker drove one
        AuthenticationTokenLoader.instance().reset_cache()
        ray.init(
            address=local.address,
            _node_ip_address=HOST,
            log_to_driver=False,
            configure_logging=False,
        )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        yield local
    finally:
        if ray.is_initialized():
            # Ray Data's detached actors (its stats, usage and autoscaling coordinator) would
            # keep the head from stopping for half a minute
            for named in ray.util.list_named_actors(all_namespaces=True):
                ray.kill(ray.get_actor(named["name"], namespace=named["namespace"]))
        ray.shutdown()
        pids = local.pids()
        local.stop()
        shutil.rmtree(temp, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    left = [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)]
    assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(home=tmp_path_factory.mktemp("ray-data") / "home")
    ensure_home(settings)
    settings.admin_token = ADMIN_TOKEN
    live = LiveServer(settings).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def admin(server: LiveServer) -> Iterator[Any]:
    with server.client() as client:
        client.create_project(PROJECT)
        per = ROWS // WRITES
        for w in range(WRITES):
            ids = pa.array(range(w * per, (w + 1) * per), pa.int64())
            client.write_table(
                PROJECT,
                "events",
                pa.table(
                    {
                        "id": ids,
                        "amount": pa.compute.multiply(ids, 0.5),
                        "kind": pa.array([f"k{i % 7}" for i in range(w * per, (w + 1) * per)]),
                    }
                ),
            )
        yield client


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def _materialise(dataset: Any) -> pa.Table:
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def _staged(server: LiveServer) -> list[str]:
    return sorted(p.name for p in (server.settings.home / "tmp").glob("parts-*"))


def test_read_ray_reads_the_pinned_version_as_duckdb_and_the_loader_do(
    cluster: LocalRayCluster, server: LiveServer, admin: Any
) -> None:
    pieces = admin.table_pieces(PROJECT, "events")
    assert (pieces.version, pieces.rows) == (WRITES - 1, ROWS)
    assert len(pieces.pieces) >= WRITES
    dataset = admin.read_ray(PROJECT, "events")
    # written after the Dataset was made, before it is read: the read stays on its version
    admin.write_table(PROJECT, "events", pa.table({"id": [-1], "amount": [0.0], "kind": ["x"]}))
    got = _materialise(dataset)
    assert got.num_rows == ROWS
    by_sql = admin.sql(PROJECT, f"select * from {PINNED}")
    assert _sorted(got).equals(_sorted(by_sql))
    loader = admin.loader(PROJECT, PINNED, batch_size=50_000)
    assert _sorted(got).equals(_sorted(pa.Table.from_batches(list(loader.batches()))))
    # one read task per piece: the reads ran as parallel tasks
    stats = dataset.stats()
    assert f"{len(pieces.pieces)} tasks executed" in stats, stats
    columns = _materialise(admin.read_ray(PROJECT, PINNED, columns=["id"]))
    assert columns.column_names == ["id"] and columns.num_rows == ROWS
    # fewer tasks than pieces: each reads its consecutive pieces, request after request
    two = admin.read_ray(PROJECT, PINNED, parallelism=2)
    assert _sorted(_materialise(two)).equals(_sorted(by_sql))
    assert "2 tasks executed" in two.stats()


def test_another_projects_token_is_refused(
    cluster: LocalRayCluster, server: LiveServer, admin: Any
) -> None:
    admin.create_user("eve", password="correct horse battery")
    admin.create_project("other")
    admin.add_member("other", "eve", "member")
    token = admin.create_token("eve", user="eve").token
    with server.client(token) as eve:
        eve.write_table("other", "mine", pa.table({"id": [1]}))
        assert _materialise(eve.read_ray("other", "mine")).num_rows == 1  # her own: fine
        with pytest.raises(NotFound, match="project 'etl' not found"):
            eve.read_ray(PROJECT, "events")
        with pytest.raises(NotFound, match="project 'etl' not found"):
            eve.write_ray(PROJECT, "events", ray.data.from_arrow(pa.table({"id": [1]})))
        # nor can she slip a part into a write of the project she does not belong to
        write = admin._request("POST", f"/projects/{PROJECT}/tables/stolen/parts").json()["write"]
        try:
            for project in (PROJECT, "other"):
                with pytest.raises(NotFound):
                    eve._request(
                        "PUT", f"/projects/{project}/tables/stolen/parts/{write}/0", content=b"x"
                    )
        finally:
            admin._request("DELETE", f"/projects/{PROJECT}/tables/stolen/parts/{write}")
    assert not _staged(server)


def _doubled(batch: pa.Table) -> pa.Table:
    return batch.append_column("double", pa.compute.multiply(batch.column("amount"), 2))


def test_write_ray_commits_every_task_as_one_version(
    cluster: LocalRayCluster, server: LiveServer, admin: Any
) -> None:
    source = admin.read_ray(PROJECT, PINNED)
    dataset = source.repartition(5).map_batches(_doubled, batch_format="pyarrow")
    written = admin.write_ray(PROJECT, "doubled", dataset)
    assert (written.version, written.rows_written, written.num_rows) == (0, ROWS, ROWS)
    assert [v.version for v in admin.table_versions(PROJECT, "doubled")] == [0]
    got = admin.read_table(PROJECT, "doubled")
    assert got.column_names == ["id", "amount", "kind", "double"]
    expected = _doubled(admin.read_table(PROJECT, "events", version=WRITES - 1))
    assert _sorted(got).equals(_sorted(expected))
    # overwrite: again one version, the table now holds what this write held
    again = admin.write_ray(
        PROJECT, "doubled", dataset.filter(expr=col("id") < 10), mode="overwrite"
    )
    assert (again.version, again.num_rows) == (1, 10)
    assert not _staged(server)


def _boom_at_the_end(batch: pa.Table) -> pa.Table:
    if pa.compute.max(batch.column("id")).as_py() >= ROWS - 1:
        time.sleep(1.0)  # the other tasks have staged their parts by now
        raise RuntimeError("boom: a task of the write failed")
    return batch


def test_a_failed_task_leaves_no_version_and_no_part(
    cluster: LocalRayCluster, server: LiveServer, admin: Any
) -> None:
    dataset = (
        admin.read_ray(PROJECT, PINNED)
        .repartition(4)
        .map_batches(_boom_at_the_end, batch_format="pyarrow")
    )
    with pytest.raises(Exception, match="boom: a task of the write failed"):
        admin.write_ray(PROJECT, "never", dataset)
    with pytest.raises(NotFound):
        admin.table_info(PROJECT, "never")
    assert not _staged(server)
    assert admin.list_audit(action="table.parts.drop")  # the driver dropped the write
    # an existing table: still at its version
    before = admin.table_info(PROJECT, "events").version
    with pytest.raises(Exception, match="boom"):
        admin.write_ray(PROJECT, "events", dataset, mode="overwrite")
    assert admin.table_info(PROJECT, "events").version == before
    assert not _staged(server)


def _evens(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield batch.filter(pc.equal(pc.bit_wise_and(batch.column("id"), 1), 0))


def _cents(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    for batch in batches:
        cents = pc.cast(pc.multiply(batch.column("amount"), 100), pa.int64())
        yield pa.Table.from_batches([batch]).append_column("cents", cents)


def test_an_etl_pipeline_runs_with_ray_data_as_it_runs_locally(
    cluster: LocalRayCluster, server: LiveServer, admin: Any
) -> None:
    spec = Pipeline(
        name="evens",
        sources={"events": PINNED},
        transforms=[python("even", _evens), python("cents", _cents)],
        output={"table": "evens_ray", "mode": "overwrite"},
    )
    on_ray = admin.run_pipeline(PROJECT, spec, engine="ray")
    assert on_ray.status == "succeeded", on_ray.error
    local = admin.run_pipeline(
        PROJECT, spec.model_copy(update={"output": Output(table="evens_local")})
    )
    assert local.status == "succeeded", local.error
    assert (on_ray.rows_in, on_ray.rows_out) == (local.rows_in, local.rows_out) == (ROWS, ROWS // 2)
    assert [s.rows_out for s in on_ray.steps] == [s.rows_out for s in local.steps]
    assert [(i.table, i.version) for i in on_ray.inputs] == [("events", WRITES - 1)]
    assert on_ray.output_version == 0  # one version, whatever the number of tasks
    ray_rows = admin.read_table(PROJECT, "evens_ray")
    assert _sorted(ray_rows).equals(_sorted(admin.read_table(PROJECT, "evens_local")))
    # SQL runs on one machine: refused before any run starts
    runs = len(admin.list_pipeline_runs(PROJECT))
    with_sql = spec.model_copy(update={"transforms": [sql("q", "select * from events")]})
    with pytest.raises(InvalidInput, match="step 'q' is SQL, which runs on one machine"):
        admin.run_pipeline(PROJECT, with_sql, engine="ray")
    assert len(admin.list_pipeline_runs(PROJECT)) == runs


def test_a_step_from_the_pipelines_folder_runs_on_the_ray_workers(
    cluster: LocalRayCluster, server: LiveServer, admin: Any, tmp_path: Path
) -> None:
    # the workers cannot import the pipeline's folder by name: its module travels by value
    (tmp_path / "ray_etl_steps.py").write_text(
        "import pyarrow.compute as pc\n\n\n"
        "def first_ten(batches):\n"
        "    for batch in batches:\n"
        "        yield batch.filter(pc.less(batch.column('id'), 10))\n"
    )
    (tmp_path / "small.yaml").write_text(
        f"name: small\nsources:\n  events: {PINNED}\ntransforms:\n"
        "  - name: small\n    python: ray_etl_steps:first_ten\noutput:\n  table: small\n"
    )
    record = admin.run_pipeline(PROJECT, tmp_path / "small.yaml", engine="ray")
    assert record.status == "succeeded", record.error
    assert sorted(admin.read_table(PROJECT, "small").column("id").to_pylist()) == list(range(10))


def test_the_top_level_helpers_use_the_client_of_the_environment(
    cluster: LocalRayCluster, server: LiveServer, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import underlay

    monkeypatch.setenv("UNDERLAY_URL", server.url)
    monkeypatch.setenv("UNDERLAY_TOKEN", ADMIN_TOKEN)
    small = underlay.read_ray(PROJECT, PINNED, columns=["id"]).filter(expr=col("id") < 100)
    written = underlay.write_ray(PROJECT, "hundred", small)
    assert (written.version, written.rows_written) == (0, 100)

"""Loaders through a real server on 127.0.0.1: batches, NumPy, torch, shards, seeds, epochs."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import ADMIN_TOKEN
from underlay.errors import InvalidInput, NotFound

ROWS = 600
PARTS = 6  # one Parquet file (one row group) per write


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("ml")
    for part in range(PARTS):
        ids = range(part * ROWS // PARTS, (part + 1) * ROWS // PARTS)
        admin.write_table(
            "ml",
            "points",
            pa.table(
                {
                    "id": pa.array(ids, pa.int64()),
                    "x": pa.array([i / 10 for i in ids], pa.float32()),
                    "flag": pa.array([i % 2 == 0 for i in ids]),
                    "label": pa.array([f"c{i % 3}" for i in ids]),
                }
            ),
        )
    return "ml"


def _ids(batches: Any) -> list[int]:
    return [i for batch in batches for i in batch.column("id").to_pylist()]


def test_batches_are_exactly_batch_size_and_hold_every_row_once(admin: Any, project: str) -> None:
    loader = admin.loader(project, "points", batch_size=64)
    batches = list(loader.batches())
    assert [b.num_rows for b in batches] == [64] * 9 + [24]
    assert sorted(_ids(batches)) == list(range(ROWS))
    in_order = admin.read_table(project, "points").column("id").to_pylist()
    assert _ids(batches) == in_order  # no shuffle: the table's order, as a read gives it
    assert (loader.version, loader.rows) == (PARTS - 1, ROWS)
    dropped = list(admin.loader(project, "points", batch_size=64, drop_last=True).batches())
    assert [b.num_rows for b in dropped] == [64] * 9
    whole = list(admin.loader(project, "points", batch_size=1000).batches())
    assert [b.num_rows for b in whole] == [ROWS]


def test_columns_and_numpy_dtypes(admin: Any, project: str) -> None:
    loader = admin.loader(project, "points", batch_size=100, columns=["x", "id"])
    (first, *_) = loader.batches()
    assert first.schema.names == ["x", "id"]
    arrays = next(iter(admin.loader(project, "points", batch_size=100).numpy()))
    assert {name: a.dtype for name, a in arrays.items()} == {
        "id": np.dtype("int64"),
        "x": np.dtype("float32"),
        "flag": np.dtype("bool"),
        "label": np.dtype("O"),
    }
    first_id = int(arrays["id"][0])
    assert arrays["id"].tolist() == list(range(first_id, first_id + 100))
    assert arrays["label"][:3].tolist() == [f"c{(first_id + i) % 3}" for i in range(3)]
    with pytest.raises(InvalidInput, match="cannot read those columns"):
        list(admin.loader(project, "points", columns=["nope"]).batches())


def test_a_pinned_version_is_read_whatever_is_published_later(admin: Any, project: str) -> None:
    loader = admin.loader(project, "points@0", batch_size=500)
    one_more = {"id": [ROWS], "x": pa.array([0.0], pa.float32()), "flag": [True], "label": ["c"]}
    admin.write_table(project, "points", pa.table(one_more))
    assert sorted(_ids(loader.batches())) == list(range(ROWS // PARTS))
    assert admin.loader(project, "points").rows == ROWS + 1  # a new loader: the new version
    with pytest.raises(NotFound, match="no version 42"):
        admin.loader(project, "points@42")
    with pytest.raises(InvalidInput, match="must be a number"):
        admin.loader(project, "points@x")


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_together_read_every_row_once(admin: Any, project: str, shuffle: bool) -> None:
    seen: list[int] = []
    for rank in range(3):
        loader = admin.loader(project, "points", batch_size=32, shard=(rank, 3), shuffle=shuffle)
        mine = _ids(loader.batches())
        assert mine  # six row groups: two per shard
        seen += mine
    assert sorted(seen) == list(range(ROWS))


def test_shuffle_is_deterministic_by_seed_and_differs_by_epoch_and_seed(
    admin: Any, project: str
) -> None:
    def order(seed: int, epoch: int) -> list[int]:
        loader = admin.loader(
            project, "points", batch_size=50, shuffle=True, seed=seed, shuffle_buffer=250
        )
        loader.set_epoch(epoch)
        return _ids(loader.batches())

    first = order(7, 0)
    assert sorted(first) == list(range(ROWS))
    assert first != list(range(ROWS))
    assert order(7, 0) == first
    assert order(7, 1) != first
    assert sorted(order(7, 1)) == list(range(ROWS))
    assert order(8, 0) != first


SCRIPT = """
import sys
from underlay.client import Client
with Client(sys.argv[1], sys.argv[2]) as c:
    loader = c.loader("ml", "points", batch_size=40, shuffle=True, seed=11, shard=(1, 2))
    loader.set_epoch(3)
    print(",".join(str(i) for b in loader.batches() for i in b.column("id").to_pylist()))
"""


@pytest.mark.slow
def test_the_same_seed_gives_the_same_order_in_other_processes(
    server: Any, admin: Any, project: str
) -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")

    def run() -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, server.url, ADMIN_TOKEN],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
            check=True,
        )
        return [int(i) for i in done.stdout.strip().split(",")]

    one, two = run(), run()
    assert one == two
    here = admin.loader(project, "points", batch_size=40, shuffle=True, seed=11, shard=(1, 2))
    here.set_epoch(3)
    assert _ids(here.batches()) == one


def test_closing_early_stops_the_background_thread(admin: Any, project: str) -> None:
    batches = admin.loader(project, "points", batch_size=10, prefetch=1).batches()
    next(batches)
    assert batches.running  # blocked on its full queue, 58 batches to go
    batches.close()
    assert not batches.running
    assert not [t for t in threading.enumerate() if t.name == "underlay-loader"]
    with pytest.raises(StopIteration):
        next(batches)
    with admin.loader(project, "points", batch_size=10).numpy() as arrays:
        next(arrays)
    assert not arrays.running
    next(admin.loader(project, "points", batch_size=10).batches())  # dropped unfinished
    gc.collect()
    assert not [t for t in threading.enumerate() if t.name == "underlay-loader"]


def test_an_error_in_the_background_reaches_the_consumer(admin: Any, project: str) -> None:
    loader = admin.loader(project, "points", batch_size=10)
    admin.delete_table(project, "points")
    batches = loader.batches()
    with pytest.raises(NotFound, match="points"):
        next(batches)
    assert not batches.running


def test_viewers_load_and_other_projects_get_404(server: Any, admin: Any, project: str) -> None:
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(project, "vic", "viewer")
    with server.client(admin.create_token("vic", user="vic").token) as vic:
        assert len(_ids(vic.loader(project, "points").batches())) == ROWS
    admin.create_user("eve", password="correct horse battery")
    token = admin.create_token("eve", user="eve").token
    with server.client(token) as eve:
        with pytest.raises(NotFound):
            eve.loader(project, "points")
        refused = eve._http.get(f"/projects/{project}/tables/points/data", params={"shard": "0/2"})
        assert refused.status_code == 404


def test_bad_loader_input_is_refused(server: Any, admin: Any, project: str) -> None:
    with pytest.raises(InvalidInput, match="rank < world"):
        admin.loader(project, "points", shard=(3, 3))
    with pytest.raises(InvalidInput, match="batch_size"):
        admin.loader(project, "points", batch_size=0)
    for shard in ("3/3", "x", "1/0", "-1/2", "\u0661/2", "1/2/3"):
        answer = admin._http.get(f"/projects/{project}/tables/points/data", params={"shard": shard})
        assert answer.status_code in (400, 422), shard
        assert "shard" in answer.text
    pieces = admin.table_pieces(project, "points")
    assert (pieces.rows, pieces.files, len(pieces.pieces)) == (ROWS, PARTS, PARTS)


def test_without_torch_the_error_says_what_to_install(
    admin: Any, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "underlay.client.torch_loader", raising=False)
    with pytest.raises(InvalidInput, match=r"pip install 'underlay\[torch\]'"):
        admin.loader(project, "points").torch()


@pytest.mark.slow
def test_torch_workers_together_read_every_row_once(admin: Any, project: str) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    dataset = admin.loader(project, "points", batch_size=25, shuffle=True, seed=3).torch()
    seen: list[int] = []
    for batch in DataLoader(dataset, batch_size=None, num_workers=2):
        assert batch["id"].dtype == torch.int64 and batch["x"].dtype == torch.float32
        assert batch["flag"].dtype == torch.bool and isinstance(batch["label"], list)
        seen += batch["id"].tolist()
    assert sorted(seen) == list(range(ROWS))
    ranked = admin.loader(project, "points", batch_size=25, shard=(1, 2)).torch()
    rank_one = [
        i for b in DataLoader(ranked, batch_size=None, num_workers=2) for i in b["id"].tolist()
    ]
    rank_zero = admin.loader(project, "points", batch_size=25, shard=(0, 2)).torch()
    rank_zero_ids = [
        i for b in DataLoader(rank_zero, batch_size=None, num_workers=2) for i in b["id"].tolist()
    ]
    assert sorted(rank_one + rank_zero_ids) == list(range(ROWS))
    assert rank_zero_ids and rank_one


@pytest.mark.slow
def test_a_training_loop_learns_from_the_dataset(admin: Any) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    admin.create_project("fit")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2000).astype(np.float32)
    admin.write_table("fit", "line", pa.table({"x": x, "y": 3 * x + 1}))
    dataset = admin.loader("fit", "line", batch_size=100, shuffle=True, seed=1).torch()
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for batch in DataLoader(dataset, batch_size=None):
            loss = torch.nn.functional.mse_loss(model(batch["x"][:, None]), batch["y"][:, None])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    assert len(losses) == 60
    assert losses[-1] < losses[0] / 100
    assert model.weight.item() == pytest.approx(3, abs=0.05)


def test_the_data_route_streams_one_shard_with_a_short_query(
    server: Any, admin: Any, project: str
) -> None:
    url = f"{server.url}/api/v1/projects/{project}/tables/points/data"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    params = {"seed": 5, "epoch": 1, "shard": "2/3", "columns": "id", "batch_rows": 7}
    answer = httpx.get(url, params=params, headers=headers)
    assert answer.status_code == 200
    table = pa.ipc.open_stream(answer.content).read_all()
    assert table.schema.names == ["id"] and table.num_rows == 200  # two row groups of 100
    assert max(b.num_rows for b in table.to_batches()) <= 7


def test_the_server_orders_row_groups_by_seed_and_epoch(server: Any, project: str) -> None:
    url = f"{server.url}/api/v1/projects/{project}/tables/points/data"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def firsts(**params: Any) -> list[int]:
        answer = httpx.get(url, params={"columns": "id", **params}, headers=headers)
        ids = pa.ipc.open_stream(answer.content).read_all().column("id").to_pylist()
        return ids[:: ROWS // PARTS]  # the first row of each row group, in streamed order

    first = firsts(seed=1, epoch=0)
    assert sorted(first) == [i * ROWS // PARTS for i in range(PARTS)]
    assert firsts(seed=1, epoch=0) == first
    # six row groups have 720 orders: two seeds (or epochs) agree now and then, five never
    assert len({tuple(firsts(seed=1, epoch=e)) for e in range(5)}) > 1
    assert len({tuple(firsts(seed=s, epoch=0)) for s in range(5)}) > 1


def test_rows_mix_only_within_the_shuffle_buffer(admin: Any, project: str) -> None:
    # buffers of one row group (100 rows): each batch of 100 is one row group, mixed
    loader = admin.loader(project, "points", batch_size=100, shuffle=True, shuffle_buffer=100)
    batches = [b.column("id").to_pylist() for b in loader.batches()]
    assert len(batches) == PARTS
    for ids in batches:
        assert sorted(ids) == list(range(min(ids), min(ids) + 100))
        assert ids != sorted(ids)


def test_without_prefetch_no_thread_runs(admin: Any, project: str) -> None:
    batches = admin.loader(project, "points", batch_size=100, prefetch=0).batches()
    assert len(next(batches)) == 100
    assert not batches.running
    assert not [t for t in threading.enumerate() if t.name == "underlay-loader"]
    assert len(_ids(batches)) == ROWS - 100


def test_nulls_in_a_numeric_column_become_nan(admin: Any) -> None:
    admin.create_project("gaps")
    admin.write_table("gaps", "g", pa.table({"n": pa.array([1, None, 3], pa.int64())}))
    (arrays,) = admin.loader("gaps", "g", batch_size=10).numpy()
    assert arrays["n"].dtype == np.dtype("float64")
    assert np.isnan(arrays["n"][1]) and arrays["n"][[0, 2]].tolist() == [1.0, 3.0]


DISTRIBUTED = """
import sys
import torch.distributed as dist
from torch.utils.data import DataLoader
from underlay.client import Client
url, token, init, rank = sys.argv[1:]
dist.init_process_group("gloo", init_method=init, rank=int(rank), world_size=2)
with Client(url, token) as c:
    dataset = c.loader("ml", "points", batch_size=30, shuffle=True, seed=2).torch()
    ids = [i for b in DataLoader(dataset, batch_size=None) for i in b["id"].tolist()]
print(",".join(map(str, ids)))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torch_distributed_ranks_shard_by_themselves(
    server: Any, project: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    src = str(Path(__file__).resolve().parents[2] / "src")
    init = f"file://{tmp_path / 'rendezvous'}"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", DISTRIBUTED, server.url, ADMIN_TOKEN, init, str(rank)],
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=180)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0]
    zero, one = ([int(i) for i in out.strip().split(",")] for out in outputs)
    assert zero and one
    assert sorted(zero + one) == list(range(ROWS))


@pytest.mark.parametrize("dictionary", [False, True])
def test_ipc_chunks_read_back_through_any_chunking(dictionary: bool) -> None:
    from underlay.data.arrowio import ChunkFile, ipc_chunks

    labels = pa.array(["a", "b", None, "a"] * 250)
    table = pa.table(
        {
            "id": pa.array(range(1000), pa.int64()),
            "label": labels.dictionary_encode() if dictionary else labels,
        }
    )
    data = b"".join(bytes(c) for c in ipc_chunks(table.schema, table.to_batches(max_chunksize=99)))
    for size in (1, 7, 4096, len(data)):
        pieces = iter([data[i : i + size] for i in range(0, len(data), size)])
        back = pa.ipc.open_stream(ChunkFile(pieces)).read_all()
        assert back.equals(table)


def _raw(admin: Any, project: str, table: str = "points", **params: Any) -> list[Any]:
    from underlay.client.loader import _pieces

    path = f"/projects/{project}/tables/{table}/pieces/raw"
    return list(_pieces(admin, path, params, ahead=False))


def test_pieces_travel_as_parquet_bytes_in_the_order_the_data_route_streams(
    server: Any, admin: Any, project: str
) -> None:
    params = {"seed": 5, "epoch": 1, "shard": "2/3", "columns": "id,x"}
    schema, *batches = _raw(admin, project, **params)
    assert schema.names == ["id", "x"]
    url = f"{server.url}/api/v1/projects/{project}/tables/points/data"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    decoded = pa.ipc.open_stream(httpx.get(url, params=params, headers=headers).content)
    assert pa.Table.from_batches(batches).equals(decoded.read_all())  # the same two row groups
    assert sum(b.num_rows for b in batches) == 200
    # the frames carry the files' own bytes: a column chunk and the footer, unchanged
    from underlay.data import pieces as frames

    raw = httpx.get(url.replace("/data", "/pieces/raw"), params=params, headers=headers)
    kinds, at, first_range = [], 0, None
    while at < len(raw.content):
        kind, _, length, argument = frames.FRAME.unpack_from(raw.content, at)
        at += frames.FRAME.size
        if kind == frames.RANGE and first_range is None:
            first_range = (argument, raw.content[at : at + length])
        kinds.append(kind)
        at += length
    assert kinds[0] == frames.SCHEMA and kinds[-1] == frames.END
    assert kinds.count(frames.PIECE) == 2 and frames.ARROW not in kinds
    assert first_range is not None
    location = next(Path(server.settings.tables_url).glob("*/*/_delta_log")).parent
    offset, data = first_range
    assert any(
        p.read_bytes()[offset : offset + len(data)] == data for p in location.glob("*.parquet")
    )


def test_the_raw_route_is_project_scoped_and_refuses_bad_input(
    server: Any, admin: Any, project: str
) -> None:
    admin.create_user("eve", password="correct horse battery")
    token = admin.create_token("eve", user="eve").token
    with server.client(token) as eve:
        refused = eve._http.get(f"/projects/{project}/tables/points/pieces/raw")
        assert refused.status_code == 404
    assert [e.actor for e in admin.list_audit(action="table.read")] == ["eve"]  # refused
    assert len(_raw(admin, project, shard="0/2")) > 1
    reads = admin.list_audit(action="table.read")  # one record for the shard's whole stream
    assert [(e.actor, e.resource) for e in reads if e.actor == "admin"] == [
        ("admin", f"project:{project}/table:points@{PARTS - 1}")
    ]
    path = f"/projects/{project}/tables/points/pieces/raw"
    for params in ({"shard": "3/3"}, {"columns": "nope"}, {"seed": -1}, {"version": 99}):
        answer = admin._http.get(path, params=params)
        assert 400 <= answer.status_code < 500, params


def test_files_without_a_later_column_are_decoded_by_the_server(admin: Any) -> None:
    admin.create_project("grow")
    admin.write_table("grow", "g", pa.table({"id": pa.array([1, 2], pa.int64())}))
    wider = pa.table({"id": pa.array([3], pa.int64()), "extra": pa.array(["c"])})
    admin.write_table("grow", "g", wider, evolve=True)
    _, *batches = _raw(admin, "grow", "g")
    rows = pa.Table.from_batches(batches).sort_by("id").to_pylist()
    assert rows == [
        {"id": 1, "extra": None},
        {"id": 2, "extra": None},
        {"id": 3, "extra": "c"},
    ]
    loaded = list(admin.loader("grow", "g", batch_size=2, columns=["extra", "id"]).batches())
    assert [b.schema.names for b in loaded] == [["extra", "id"]] * 2


def test_a_piece_stream_cut_short_is_an_integrity_failure(server: Any, project: str) -> None:
    from underlay.client.loader import _Bytes, _decode, _frames
    from underlay.errors import IntegrityFailure

    url = f"{server.url}/api/v1/projects/{project}/tables/points/pieces/raw"
    whole = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).content
    rows = sum(b.num_rows for b in list(_decode(_frames(_Bytes(iter([whole])))))[1:])
    assert rows == ROWS
    for cut in (10, len(whole) // 2, len(whole) - 1):
        with pytest.raises(IntegrityFailure, match="broke off"):
            list(_decode(_frames(_Bytes(iter([whole[:cut]])))))


def test_columns_apart_in_the_file_are_read(admin: Any, project: str) -> None:
    (first, *_) = admin.loader(project, "points", batch_size=ROWS, columns=["label", "id"])
    assert first.schema.names == ["label", "id"]
    assert sorted(first.column("id").to_pylist()) == list(range(ROWS))
    assert first.column("label").to_pylist()[:1] == [f"c{first.column('id')[0].as_py() % 3}"]

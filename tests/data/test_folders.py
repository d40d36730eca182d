"""A folder of CSV, Parquet or JSON-lines files ingested as one version, through real HTTP and
the SDK (and the CLI once): one format, sorted by path, hidden and ignored files skipped, all
or nothing, quarantined rows naming their file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from underlay.errors import InvalidInput


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("shop")
    return "shop"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _csv_folder(root: Path) -> Path:
    _write(root / "b.csv", "id,city\n3,Lima\n4,Accra\n")
    _write(root / "a.csv", "id,city\n1,Zagreb\n2,Bern\n")
    _write(root / "2024" / "q1" / "c.csv", "id,city\n5,Oslo\n")  # nested: sorted by path
    _write(root / ".hidden.csv", "id,city\n100,Hidden\n")
    _write(root / ".cache" / "d.csv", "id,city\n101,Hidden\n")
    _write(root / "scratch" / "e.csv", "id,city\n102,Ignored\n")
    _write(root / "skip.csv", "id,city\n103,Ignored\n")
    _write(root / ".underlayignore", "scratch/\nskip.csv\n")
    _write(root / "README.md", "not data\n")
    return root


def test_a_csv_folder_is_one_version_of_its_files_sorted_by_path(
    admin: Any, project: str, tmp_path: Path
) -> None:
    root = _csv_folder(tmp_path / "cities")
    result = admin.write_table(project, "cities", root)
    assert (result.version, result.rows_written, result.files) == (0, 5, 3)
    assert admin.table_versions(project, "cities")[0].source == "cities"
    rows = sorted(admin.read_table(project, "cities").to_pylist(), key=lambda r: r["id"])
    assert rows == [
        {"id": 1, "city": "Zagreb"},
        {"id": 2, "city": "Bern"},
        {"id": 3, "city": "Lima"},
        {"id": 4, "city": "Accra"},
        {"id": 5, "city": "Oslo"},
    ]
    again = admin.write_table(project, "cities", root)  # appends as one more version
    assert (again.version, again.num_rows) == (1, 10)


def test_parquet_and_jsonl_folders(admin: Any, project: str, tmp_path: Path) -> None:
    parquet = tmp_path / "pq"
    (parquet / "part").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "v": [0.5, 1.5]}), parquet / "part" / "0.parquet")
    pq.write_table(pa.table({"id": [3], "v": [2.5]}), parquet / "part" / "1.parquet")
    result = admin.write_table(project, "p", parquet)
    assert (result.rows_written, result.files) == (3, 2)
    assert sorted(admin.read_table(project, "p").column("id").to_pylist()) == [1, 2, 3]

    lines = tmp_path / "jl"
    _write(lines / "a.jsonl", '{"id": 1, "tag": "x"}\n{"id": 2, "tag": "y"}\n')
    _write(lines / "sub" / "b.ndjson", '{"id": 3, "tag": "z"}\n')
    result = admin.write_table(project, "j", lines)
    assert (result.rows_written, result.files) == (3, 2)
    assert sorted(admin.read_table(project, "j").column("tag").to_pylist()) == ["x", "y", "z"]


def test_mixed_formats_and_empty_folders_are_refused(
    admin: Any, project: str, tmp_path: Path
) -> None:
    mixed = tmp_path / "mixed"
    _write(mixed / "a.csv", "id\n1\n")
    _write(mixed / "b.jsonl", '{"id": 2}\n')
    with pytest.raises(InvalidInput, match=r"several formats \(csv: a.csv; jsonl: b.jsonl\)"):
        admin.write_table(project, "m", mixed)
    empty = tmp_path / "empty"
    _write(empty / "notes.txt", "nothing here\n")
    _write(empty / ".hidden.csv", "id\n1\n")
    with pytest.raises(InvalidInput, match="holds no CSV, Parquet or JSON-lines file"):
        admin.write_table(project, "e", empty)
    assert admin.list_tables(project) == []


def test_a_bad_file_in_the_middle_writes_nothing(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    admin.write_table(project, "t", pa.table({"id": [0], "city": ["Start"]}))
    root = tmp_path / "batch"
    for i in range(1, 8):
        _write(root / f"{i:02d}.csv", f"id,city\n{i},Town{i}\n")
    _write(root / "05.csv", "id,city,extra\n5,Town5,x\n")  # another schema: the 5th file fails
    with pytest.raises(InvalidInput, match=r"05.csv: .*'extra' is not in the table"):
        admin.write_table(project, "t", root)
    assert admin.table_info(project, "t").version == 0
    assert [v.version for v in admin.table_versions(project, "t")] == [0]
    assert admin.read_table(project, "t").num_rows == 1
    with pytest.raises(InvalidInput, match=r"05\.csv"):  # a new table: not even created
        admin.write_table(project, "fresh", root)
    assert [t.name for t in admin.list_tables(project)] == ["t"]
    assert not list((server.settings.home / "tmp").iterdir())  # nothing staged is left


def test_quarantined_rows_name_their_file_and_line(
    admin: Any, project: str, tmp_path: Path
) -> None:
    root = tmp_path / "orders"
    _write(root / "jan.csv", "id,amount\n1,1.5\n2,oops\n3,2.5\n")
    _write(root / "feb" / "01.csv", "id,amount\n4,1.0\n5,2.0,extra\n")
    result = admin.write_table(project, "orders", root)
    assert (result.rows_written, result.rows_quarantined, result.files) == (3, 2, 2)
    # sorted by path: feb/01.csv came first, so its line 3 is the first row set aside
    bad = admin.read_table(project, "orders_quarantine").to_pylist()
    found = [(r["source"], r["line"]) for r in bad]
    assert found == [("orders/feb/01.csv", 3), ("orders/jan.csv", 3)]
    assert "expected 2 fields" in bad[0]["reason"] and "'oops'" in bad[1]["reason"]


def test_malformed_folder_bodies_are_400(server: Any, admin: Any, project: str) -> None:
    def put(body: bytes, fmt: str = "csv") -> httpx.Response:
        return httpx.put(
            f"{server.url}/api/v1/projects/{project}/tables/junk/data",
            params={"format": fmt, "folder": True},
            content=body,
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )

    frame = (5).to_bytes(4, "big") + b"a.csv" + (100).to_bytes(8, "big") + b"id\n1\n"
    cases = {
        b"": "holds no file",
        frame: "broke off",
        b"\xff\xff\xff\xff": "bad length",
        (5).to_bytes(4, "big") + b"a.txt" + (0).to_bytes(8, "big"): "is not a csv file",
    }
    for body, message in cases.items():
        r = put(body)
        assert r.status_code == 400 and message in r.text, (body, r.text)
    assert put(b"", "arrow").status_code in (400, 422)
    assert admin.list_tables(project) == []


def test_cli_ingests_a_folder(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    root = _csv_folder(tmp_path / "cities")
    result = as_json(cli("tables", "ingest", "cities", str(root), "-p", "shop", "--json"))
    assert (result["rows_written"], result["files"]) == (5, 3)
    human = cli("tables", "ingest", "cities", str(root), "-p", "shop")
    assert human.stdout.strip() == "cities@1: 5 rows written from 3 files (append), 10 in the table"
    _write(root / "late.jsonl", json.dumps({"id": 9}) + "\n")
    mixed = cli("tables", "ingest", "cities", str(root), "-p", "shop", ok=False)
    assert_one_line_error(mixed, "holds files of several formats")

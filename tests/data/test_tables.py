"""Delta tables and SQL through real HTTP and the SDK: the contract of a table, on SQLite and
PostgreSQL metadata, with the tables on a local root and on S3 (a moto server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import s3_tables_config
from underlay.config import Settings, ensure_home
from underlay.errors import InvalidInput, NotFound


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def tables(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Where the tables live: the home's folder, or a fresh prefix on the local S3 server."""
    if request.param == "local":
        return {}
    return s3_tables_config(request.getfixturevalue("s3_tables_endpoint"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str, tables: dict[str, Any]) -> Settings:
    """The root conftest's settings, with the tables root under test."""
    s = Settings(home=tmp_path / "home", store={"url": database_url}, data=tables)
    ensure_home(s)
    return s


def _files(server: Any, location: str) -> list[str]:
    """Every file under a table's location, on either root (what `rm -r` would remove)."""
    from deltalake.fs import DeltaStorageHandler
    from pyarrow.fs import FileSelector, FileType

    root = server.settings.tables_url.rstrip("/")
    handler = DeltaStorageHandler(root, dict(server.settings.data.storage_options))
    relative = location[len(root) + 1 :]
    infos = handler.get_file_info_selector(FileSelector(relative, True, recursive=True))
    return [i.path for i in infos if i.type == FileType.File]


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("shop")
    return "shop"


def _location(server: Any, project: str, name: str) -> str:
    """Where the table's Delta files are (what an operator, Spark or DuckDB would open)."""
    from sqlalchemy import select

    from underlay.data.tables import TableStore
    from underlay.store import Scope
    from underlay.store.models import Project

    store = TableStore(server.settings)
    with server.platform.db.session(Scope.everything()) as session:
        pid = session.scalar(select(Project.id).where(Project.name == project))
        table = store.get(session, pid, name)
        assert table is not None
        return store.location(table)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


PEOPLE = "id,name,age\n" + "".join(f"{i},n{i},{20 + i}\n" for i in range(40))


def test_csv_ingest_quarantines_bad_rows_with_line_and_reason(
    admin: Any, project: str, tmp_path: Path
) -> None:
    path = _csv(tmp_path / "people.csv", PEOPLE + "40,bad,not-a-number\n41,short\n42,ok,62\n")
    result = admin.write_table(project, "people", path)
    assert (result.version, result.rows_written, result.rows_quarantined) == (0, 41, 2)
    assert result.quarantine_table == "people_quarantine"
    table = admin.read_table(project, "people")
    assert table.schema.field("age").type == pa.int64()
    assert sorted(table.column("id").to_pylist()) == [*range(40), 42]
    rejected = admin.read_table(project, "people_quarantine").to_pylist()
    assert [(r["line"], r["raw"]) for r in rejected] == [
        (42, "40,bad,not-a-number"),
        (43, "41,short"),
    ]
    assert "cannot read 'not-a-number' as int64" in rejected[0]["reason"]
    assert rejected[1]["reason"] == "expected 3 fields, found 2"


def test_append_with_another_schema_is_refused_and_writes_nothing(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    admin.write_table(project, "people", _csv(tmp_path / "a.csv", PEOPLE))
    wrong = pa.table({"id": ["x"], "name": ["y"], "email": ["z"]})
    with pytest.raises(InvalidInput) as refused:
        admin.write_table(project, "people", wrong)
    message = str(refused.value)
    assert "column 'id' is int64 in the table and string in the data" in message
    assert "column 'email' is not in the table" in message
    assert "column 'age' is missing from the data" in message
    assert admin.table_info(project, "people").version == 0
    assert admin.read_table(project, "people").num_rows == 40


def test_a_loader_reads_the_parquet_bytes_on_either_root(admin: Any, project: str) -> None:
    for part in range(3):
        ids = list(range(part * 10, part * 10 + 10))
        admin.write_table(project, "p", pa.table({"id": ids, "x": [float(i) for i in ids]}))
    loader = admin.loader(project, "p", batch_size=7, columns=["x", "id"])
    batches = list(loader.batches())
    assert [b.num_rows for b in batches] == [7] * 4 + [2]
    in_order = admin.read_table(project, "p").column("id").to_pylist()
    assert [i for b in batches for i in b.column("id").to_pylist()] == in_order
    assert sorted(in_order) == list(range(30))
    shards = [
        admin.loader(project, "p", batch_size=100, shuffle=True, seed=3, shard=(k, 2))
        for k in range(2)
    ]
    read = [i for s in shards for b in s.batches() for i in b.column("id").to_pylist()]
    assert sorted(read) == list(range(30))


def test_schema_evolution_only_when_asked(admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": [1], "v": ["a"]}))
    extra = pa.table({"id": [2], "v": ["b"], "w": [2.5]})
    with pytest.raises(InvalidInput, match="column 'w' is not in the table"):
        admin.write_table(project, "t", extra)
    result = admin.write_table(project, "t", extra, evolve=True)
    assert result.version == 1
    rows = sorted(admin.read_table(project, "t").to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "v": "a", "w": None}, {"id": 2, "v": "b", "w": 2.5}]


def test_overwrite_merge_and_time_travel(admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": [1, 2], "v": ["a", "b"]}))
    admin.write_table(project, "t", pa.table({"id": [9], "v": ["z"]}), mode="overwrite")
    merged = admin.write_table(
        project, "t", pa.table({"id": [9, 10], "v": ["Z", "new"]}), mode="merge", key=["id"]
    )
    assert (merged.version, merged.num_rows) == (2, 2)
    now = sorted(admin.read_table(project, "t").to_pylist(), key=lambda r: r["id"])
    assert now == [{"id": 9, "v": "Z"}, {"id": 10, "v": "new"}]
    first = admin.read_table(project, "t", version=0).to_pylist()
    assert sorted(r["id"] for r in first) == [1, 2]
    assert admin.sql(project, "select count(*) as n from t@1").to_pylist() == [{"n": 1}]
    ops = [(v.version, v.operation) for v in admin.table_versions(project, "t")]
    assert ops == [(2, "merge"), (1, "overwrite"), (0, "append")]
    with pytest.raises(NotFound, match="has no version 7"):
        admin.read_table(project, "t", version=7)


def test_parquet_and_json_lines(admin: Any, project: str, tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "score": [0.5, 0.7]}), tmp_path / "s.parquet")
    assert admin.write_table(project, "scores", tmp_path / "s.parquet").rows_written == 2
    lines = ['{"id": 3, "score": 0.9}', "not json", "[1, 2]", '{"id": "x", "score": 1}', ""]
    (tmp_path / "more.jsonl").write_text("\n".join(lines) + "\n")
    result = admin.write_table(project, "scores", tmp_path / "more.jsonl")
    assert (result.rows_written, result.rows_quarantined) == (1, 3)
    rejected = admin.read_table(project, "scores_quarantine").to_pylist()
    assert [r["line"] for r in rejected] == [2, 3, 4]
    assert admin.sql(project, "select sum(id) as s from scores").to_pylist() == [{"s": 6}]


def test_a_write_that_crashed_after_its_delta_commit_is_never_seen(
    server: Any, admin: Any, project: str
) -> None:
    """What a SIGKILL between the Delta commit and the publication leaves: a Delta version
    the platform never published. Readers keep the published one; the next write undoes it."""
    from deltalake import write_deltalake

    admin.write_table(project, "t", pa.table({"id": [1]}))
    location = _location(server, project, "t")
    options = dict(server.settings.data.storage_options)
    write_deltalake(location, pa.table({"id": [666]}), mode="append", storage_options=options)
    assert admin.read_table(project, "t").column("id").to_pylist() == [1]
    assert admin.sql(project, "select max(id) as m from t").to_pylist() == [{"m": 1}]
    admin.write_table(project, "t", pa.table({"id": [2]}))
    assert sorted(admin.read_table(project, "t").column("id").to_pylist()) == [1, 2]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("create table x as select 1", "only SELECT"),
        ("select 1; select 2", "one statement"),
        ("copy t to '/tmp/out.csv'", "only SELECT"),
        ("attach '/tmp/x.db'", "only SELECT"),
        ("select * from read_csv('/etc/passwd')", "file system operations are disabled"),
        ("select * from 'http://127.0.0.1:1/x.parquet'", "names no table of this project"),
        ("install httpfs", "only SELECT"),
        ("selec 1", "does not parse"),
    ],
)
def test_forbidden_sql_is_refused_and_audited(
    admin: Any, project: str, query: str, reason: str
) -> None:
    admin.write_table(project, "t", pa.table({"id": [1]}))
    with pytest.raises(InvalidInput, match=reason):
        admin.sql(project, query)
    (entry,) = admin.list_audit(action="table.sql")
    assert (entry.outcome, entry.resource) == ("error", f"project:{project}/sql")
    assert json.loads(entry.detail)["query"] == query


def test_sql_sees_only_the_callers_project(admin: Any, project: str) -> None:
    admin.create_project("other")
    admin.write_table("other", "secrets", pa.table({"v": ["classified"]}))
    admin.write_table(project, "t", pa.table({"id": [1]}))
    with pytest.raises(NotFound, match="table 'secrets' not found"):
        admin.sql(project, "select * from secrets")
    with pytest.raises(InvalidInput):
        admin.sql(project, "select * from other.secrets")


def test_results_stream_as_json_lines_too(server: Any, admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": list(range(20000))}))
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.stream(
        "POST",
        f"{server.url}/api/v1/projects/{project}/sql",
        json={"query": "select id from t order by id", "format": "jsonl"},
        headers=headers,
    ) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        rows = [json.loads(line) for line in response.iter_lines() if line]
    assert rows[:2] == [{"id": 0}, {"id": 1}] and len(rows) == 20000
    r = httpx.get(
        f"{server.url}/api/v1/projects/{project}/tables/t/data",
        params={"format": "jsonl", "limit": 3},
        headers=headers,
    )
    assert len(r.text.splitlines()) == 3


def test_outsiders_get_404(server: Any, admin: Any, project: str, tmp_path: Path) -> None:
    admin.write_table(project, "t", pa.table({"id": [1]}))
    admin.create_user("eve", password="correct horse battery")
    token = admin.create_token("eve", user="eve").token
    with server.client(token) as eve:
        for call in (
            lambda: eve.list_tables(project),
            lambda: eve.table_info(project, "t"),
            lambda: eve.read_table(project, "t"),
            lambda: eve.sql(project, "select * from t"),
            lambda: eve.write_table(project, "t", pa.table({"id": [2]})),
            lambda: eve.delete_table(project, "t"),
        ):
            with pytest.raises(NotFound):
                call()
    assert admin.read_table(project, "t").num_rows == 1


def test_deleting_a_table_removes_its_files(server: Any, admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": [1]}))
    location = _location(server, project, "t")
    assert any(f.endswith(".parquet") for f in _files(server, location))
    admin.delete_table(project, "t")
    assert _files(server, location) == []
    with pytest.raises(NotFound):
        admin.table_info(project, "t")


def test_a_refused_first_write_leaves_no_table_and_is_audited(
    admin: Any, project: str, tmp_path: Path
) -> None:
    empty = _csv(tmp_path / "empty.csv", "")
    with pytest.raises(InvalidInput, match="the CSV file is empty"):
        admin.write_table(project, "fresh", empty)
    assert admin.list_tables(project) == []
    (entry,) = admin.list_audit(action="table.write")
    assert entry.outcome == "error" and "the CSV file is empty" in entry.detail


def test_concurrent_appends_each_get_their_version(server: Any, admin: Any, project: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    admin.write_table(project, "t", pa.table({"id": [0]}))

    def append(i: int) -> int:
        with server.client() as c:
            return int(c.write_table(project, "t", pa.table({"id": [i]})).version)

    with ThreadPoolExecutor(4) as pool:
        versions = sorted(pool.map(append, range(1, 5)))
    assert versions == [1, 2, 3, 4]
    assert sorted(admin.read_table(project, "t").column("id").to_pylist()) == [0, 1, 2, 3, 4]


def test_viewers_read_and_query_but_cannot_write(server: Any, admin: Any, project: str) -> None:
    from underlay.errors import PermissionDenied

    admin.write_table(project, "t", pa.table({"id": [1]}))
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(project, "vic", "viewer")
    with server.client(admin.create_token("vic", user="vic").token) as vic:
        assert vic.read_table(project, "t").num_rows == 1
        assert vic.sql(project, "select count(*) as n from t").to_pylist() == [{"n": 1}]
        with pytest.raises(PermissionDenied):
            vic.write_table(project, "t", pa.table({"id": [2]}))
    reads = admin.list_audit(action="table.read")
    assert [(e.actor, e.resource) for e in reads] == [("vic", f"project:{project}/table:t@0")]


@pytest.mark.parametrize("tables", ["local"], indirect=True)
def test_the_tables_root_is_owner_only(server: Any, admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": [1]}))
    root = Path(server.settings.tables_url)
    assert root.stat().st_mode & 0o777 == 0o700


# -- personal data is masked on ingest ------------------------------------------------------


CUSTOMERS = "id,email,phone,city\n" + "".join(
    f"{i},user{i}@example.com,+44 20 7946 {i:04d},London\n" for i in range(30)
)


def test_pii_is_tokenised_by_default_and_tables_stay_joinable(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    path = _csv(tmp_path / "customers.csv", CUSTOMERS)
    result = admin.write_table(project, "customers", path)
    report = {c["column"]: c for c in result.pii["columns"]}
    assert report["email"]["types"] == ["email"] and report["email"]["policy"] == "tokenize"
    assert report["email"]["default"] is True
    rows = admin.read_table(project, "customers").to_pylist()
    stored = " ".join(str(v) for row in rows for v in row.values())
    # tokens are hex, so they may hold "7946" by chance: look for the phone numbers' own shape
    assert "@example.com" not in stored and "+44" not in stored and "20 7946" not in stored
    assert rows[0]["email"].startswith("tok_email_") and rows[0]["city"] == "London"
    (version,) = admin.table_versions(project, "customers")
    assert version.pii_report == result.pii  # kept with the version
    # the same value gets the same token in another table of the project: joins still work
    admin.write_table(project, "orders", pa.table({"email": ["user3@example.com"], "n": [1]}))
    joined = admin.sql(
        project, "select c.id from customers c join orders o on c.email = o.email"
    ).to_pylist()
    assert joined == [{"id": 3}]
    # another project's key gives other tokens
    admin.create_project("elsewhere")
    admin.write_table("elsewhere", "customers", path)
    theirs = admin.read_table("elsewhere", "customers").to_pylist()
    assert {r["email"] for r in theirs}.isdisjoint({r["email"] for r in rows})


def test_explicit_pii_policies_win_and_keep_needs_a_reason(
    admin: Any, project: str, tmp_path: Path
) -> None:
    path = _csv(tmp_path / "customers.csv", CUSTOMERS)
    with pytest.raises(InvalidInput, match="justification"):
        admin.write_table(project, "c", path, pii={"email": "keep:"})
    with pytest.raises(InvalidInput, match="'nope'"):
        admin.write_table(project, "c", path, pii={"nope": "redact"})
    assert admin.list_tables(project) == []  # nothing written by the refusals
    result = admin.write_table(
        project,
        "c",
        path,
        pii={"email": "keep:the support team mails customers", "phone": "partial"},
    )
    row = admin.read_table(project, "c").to_pylist()[5]
    assert row["email"] == "user5@example.com"
    assert row["phone"].endswith("0005") and "7946" not in row["phone"]
    report = {c["column"]: c for c in result.pii["columns"]}
    assert report["email"]["justification"] == "the support team mails customers"


def test_quarantined_lines_are_masked_too(admin: Any, project: str, tmp_path: Path) -> None:
    path = _csv(tmp_path / "c.csv", CUSTOMERS + "oops,leaked@example.com\n")
    result = admin.write_table(project, "customers", path)
    assert result.rows_quarantined == 1
    (rejected,) = admin.read_table(project, "customers_quarantine").to_pylist()
    assert "leaked@example.com" not in rejected["raw"] and "tok_email_" in rejected["raw"]


def test_quarantined_lines_get_the_writes_pii_policies(
    admin: Any, project: str, tmp_path: Path
) -> None:
    # birth dates and names are found by their columns, not in free text: the raw line of a
    # set-aside row is masked field by field as its columns were (an explicit policy too)
    good = "".join(f"{i},Anna Berg{i},1979-02-{i + 1:02d},a{i}@example.com\n" for i in range(20))
    path = _csv(
        tmp_path / "people.csv",
        "id,name,birth_date,email\n"
        + good
        + "x,Carol King,1979-02-03,carol@example.com\n"  # id does not convert: fields align
        + "21,Bob Jones,1985-07-01,bob@example.com,extra\n",  # one field too many
    )
    result = admin.write_table(project, "people", path, pii={"name": "redact"})
    assert result.rows_quarantined == 2
    rows = admin.read_table(project, "people").to_pylist()
    token = next(r["birth_date"] for r in rows if r["id"] == 2)  # the table's 1979-02-03
    assert token != "1979-02-03"
    carol, bob = (r["raw"] for r in admin.read_table(project, "people_quarantine").to_pylist())
    for raw, secrets in ((carol, ("Carol", "1979-02-03")), (bob, ("Bob Jones", "1985-07-01"))):
        assert not any(secret in raw for secret in secrets), raw
        assert "@example.com" not in raw, raw
    assert token in carol and "[REDACTED]" in carol  # the same token as in the table: joinable
    # a JSON line set aside (by an append: it does not fit the table) is masked key by key
    path = tmp_path / "people.jsonl"
    rows_of = [{"id": i, "name": f"Anna Berg{i}", "birth_date": "1979-02-03"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_of))
    admin.write_table(project, "folk", path, pii={"name": "redact"})
    bad = {"id": "x", "name": "Carol King", "birth_date": "1985-07-01"}
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows_of[:3], bad]))
    result = admin.write_table(project, "folk", path, pii={"name": "redact"})
    assert result.rows_quarantined == 1
    (row,) = admin.read_table(project, "folk_quarantine").to_pylist()
    assert "Carol" not in row["raw"] and "1985-07-01" not in row["raw"], row["raw"]
    assert json.loads(row["raw"])["name"] == "[REDACTED]"


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "arrow"])
def test_garbage_uploads_are_400_never_500(server: Any, admin: Any, project: str, fmt: str) -> None:
    r = httpx.put(
        f"{server.url}/api/v1/projects/{project}/tables/junk/data",
        params={"format": fmt},
        content=b"\xff\xfe\x00garbage\x00\x01" * 50,
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert 400 <= r.status_code < 500, r.text
    assert admin.list_tables(project) == []


def test_reads_can_pick_columns(admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": [1, 2], "v": ["a", "b"], "w": [0.5, 1.5]}))
    picked = admin.read_table(project, "t", columns=["w", "id"])
    assert picked.column_names == ["w", "id"] and picked.num_rows == 2
    with pytest.raises(InvalidInput):
        admin.read_table(project, "t", columns=["nope"])


def test_a_first_write_that_crashed_after_its_commit_is_started_again(
    server: Any, admin: Any, project: str
) -> None:
    """A first write killed after delta-rs committed left files but no published version:
    the next write deletes them (on either root) and becomes version 0 on its own."""
    from deltalake import write_deltalake
    from sqlalchemy import select

    from underlay.data.tables import TableStore
    from underlay.store import Scope
    from underlay.store.models import Project

    store = TableStore(server.settings)
    with server.platform.db.session(Scope.everything()) as session:
        pid = session.scalar(select(Project.id).where(Project.name == project))
        location = store.location(store.ensure(session, pid, "t"))
    options = dict(server.settings.data.storage_options)
    write_deltalake(location, pa.table({"id": [666, 667]}), storage_options=options)
    leftover = {f for f in _files(server, location) if f.endswith(".parquet")}
    assert leftover
    result = admin.write_table(project, "t", pa.table({"id": [1]}))
    assert (result.version, result.num_rows) == (0, 1)
    assert admin.read_table(project, "t").column("id").to_pylist() == [1]
    assert leftover.isdisjoint(_files(server, location))  # the crashed write's files are gone


@pytest.mark.parametrize("tables", ["local"], indirect=True)
def test_a_write_may_take_longer_than_the_clients_timeout(
    server: Any, admin: Any, project: str, tmp_path: Path
) -> None:
    """A big ingest answers only when the table holds it: the client waits for the answer
    however long the server works (its other timeouts stay)."""
    from underlay.client import Client

    path = _csv(tmp_path / "big.csv", "id,v\n" + "".join(f"{i},x{i}\n" for i in range(300_000)))
    with Client(server.url, server.admin_token, timeout_s=0.5) as hasty:
        assert hasty.write_table(project, "big", path).rows_written == 300_000


def test_s3_commits_use_conditional_put_unless_the_operator_says(tmp_path: Path) -> None:
    """On S3 a version's log entry is written with If-None-Match (conditional put), which
    needs no lock service; an operator's explicit setting wins."""
    from underlay.data.tables import TableStore

    def options(given: dict[str, str]) -> dict[str, str]:
        data = {"tables_url": "s3://bucket/tables", "storage_options": given}
        return TableStore(Settings(home=tmp_path, data=data)).options

    assert options({})["aws_conditional_put"] == "etag"
    assert options({"AWS_CONDITIONAL_PUT": "disabled"}) == {"AWS_CONDITIONAL_PUT": "disabled"}
    local = TableStore(Settings(home=tmp_path)).options
    assert "aws_conditional_put" not in local


def test_queries_see_each_new_version_and_a_recreated_table(admin: Any, project: str) -> None:
    """Opened versions are kept by the server (published versions never change): a new
    version, an old one by number and a table made anew under a deleted one's name are
    each read as they are."""
    admin.write_table(project, "t", pa.table({"id": [1]}))
    count = "select count(*) as n from t"
    assert admin.sql(project, count).to_pylist() == [{"n": 1}]
    admin.write_table(project, "t", pa.table({"id": [2, 3]}))
    assert admin.sql(project, count).to_pylist() == [{"n": 3}]
    assert admin.sql(project, "select count(*) as n from t@0").to_pylist() == [{"n": 1}]
    assert admin.read_table(project, "t").num_rows == 3
    admin.delete_table(project, "t")
    admin.write_table(project, "t", pa.table({"id": [7, 8, 9, 10]}))
    assert admin.sql(project, count).to_pylist() == [{"n": 4}]
    assert admin.read_table(project, "t", version=0).num_rows == 4
    assert admin.table_pieces(project, "t").rows == 4

"""Quality gates: each check type on Arrow data, then the gate through real HTTP and the SDK
(on SQLite and PostgreSQL metadata): rejected versions stay unpublished and unreadable."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from underlay.config import DataSettings
from underlay.data.quality import evaluate, parse_spec, validate
from underlay.errors import InvalidInput, NotFound

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
DATA = pa.table(
    {
        "id": [1, 2, 3, 4],
        "country": ["DE", "FR", "NL", "PL"],
        "spend": [5.0, 10.0, 250.0, 99.5],
        "email": ["tok_email_a", "tok_email_b", "tok_email_c", "tok_email_d"],
        "seen": pa.array([NOW.replace(tzinfo=None) - dt.timedelta(hours=h) for h in (1, 2, 3, 4)]),
    }
)


def _run(check: dict[str, Any], table: pa.Table = DATA) -> dict[str, Any]:
    spec = parse_spec([check])
    validate(spec, table.schema, "t", DataSettings())
    report = evaluate(spec, pads.dataset(table), "t", DataSettings(), now=NOW).to_dict()
    (result,) = report["checks"]
    assert report["passed"] == result["passed"]
    return dict(result)


def _with(**columns: list[Any]) -> pa.Table:
    table = DATA
    for name, values in columns.items():
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pa.array(values, table.schema.field(name).type))
    return table


@pytest.mark.parametrize(
    ("check", "bad", "reason"),
    [
        (
            {"type": "not_null", "column": "country"},
            _with(country=["DE", None, "NL", "PL"]),
            "1 of 4 rows have a null in country",
        ),
        (
            {"type": "unique", "columns": ["id"]},
            _with(id=[1, 2, 2, 2]),
            "3 rows share 1 duplicated value(s) of id",
        ),
        (
            {"type": "range", "column": "spend", "min": 0, "max": 1000},
            _with(spend=[5.0, -1.0, 2000.0, 1.0]),
            "2 of 4 rows have spend outside 0..1000",
        ),
        (
            {"type": "allowed", "column": "country", "values": ["DE", "FR", "NL", "PL"]},
            _with(country=["DE", "XX", "NL", "PL"]),
            "1 of 4 rows have country not in",
        ),
        (
            {"type": "regex", "column": "email", "pattern": "^tok_email_[a-z]+$"},
            _with(email=["tok_email_a", "ada@example.com", "tok_email_c", "x"]),
            "2 of 4 rows have email not matching",
        ),
        ({"type": "row_count", "min": 2, "max": 10}, DATA.slice(0, 1), "1 rows, expected 2..10"),
        (
            {"type": "freshness", "column": "seen", "max_age": "6h"},
            _with(seen=[NOW.replace(tzinfo=None) - dt.timedelta(days=2)] * 4),
            "(2.0d old, limit 6.0h)",
        ),
        (
            {"type": "schema", "columns": {"id": "int64", "country": "string"}},
            DATA.drop_columns(["country"]).append_column("country", pa.array([1, 2, 3, 4])),
            "column 'country' is int64, expected string",
        ),
        (
            {
                "type": "sql",
                "name": "big_spenders_are_known",
                "query": "select * from t where spend > 200 and country = 'NL'",
            },
            DATA,
            "the query returns 1 rows",
        ),
    ],
)
def test_each_check_type_passes_and_fails(
    check: dict[str, Any], bad: pa.Table, reason: str
) -> None:
    if check["type"] != "sql":
        passed = _run(check)
        assert passed["passed"], passed["reason"]
    else:
        assert _run({**check, "query": "select * from t where spend < 0"})["passed"]
    failed = _run(check, bad)
    assert not failed["passed"] and failed["blocking"]
    assert reason in failed["reason"], failed["reason"]


def test_a_range_on_dates_takes_iso_bounds() -> None:
    days = pa.table({"day": pa.array([dt.date(2026, 1, 1), dt.date(2026, 3, 1)])})
    check = {"type": "range", "column": "day", "min": "2026-01-01", "max": "2026-02-01"}
    result = _run(check, days)
    assert result["failing_rows"] == 1 and result["sample"] == [{"day": "2026-03-01"}]


def test_failing_rows_are_sampled_with_their_values_and_bounded() -> None:
    many = pa.table({"id": list(range(100)), "v": [None] * 100})
    result = _run({"type": "not_null", "column": "v"}, many)
    assert result["failing_rows"] == 100
    assert result["sample"][:2] == [{"id": 0, "v": None}, {"id": 1, "v": None}]
    assert len(result["sample"]) == 5


def test_warn_only_failures_do_not_fail_the_report() -> None:
    spec = parse_spec(
        [{"type": "row_count", "min": 10, "blocking": False}, {"type": "not_null", "column": "id"}]
    )
    report = evaluate(spec, pads.dataset(DATA), "t", DataSettings()).to_dict()
    assert report["passed"] and report["warnings"] == ["row_count"] and report["failed"] == []


def test_a_check_on_a_column_that_is_gone_fails_with_the_reason() -> None:
    spec = parse_spec(
        [{"type": "not_null", "column": "gone"}, {"type": "range", "column": "id", "min": 0}]
    )
    report = evaluate(spec, pads.dataset(DATA), "t", DataSettings()).to_dict()
    gone, ranged = report["checks"]
    assert not gone["passed"] and "column 'gone' is not in this version" in gone["reason"]
    assert ranged["passed"]  # one broken check does not hide the others


@pytest.mark.parametrize(
    ("checks", "message"),
    [
        (
            [{"type": "not_null", "column": "nope"}],
            "names column(s) 'nope' that the table does not have",
        ),
        ([{"type": "regex", "column": "email", "pattern": "(unclosed"}], "bad regex"),
        (
            [{"type": "regex", "column": "id", "pattern": "^1"}],
            "cannot apply to column 'id' of type int64",
        ),
        ([{"type": "sql", "query": "delete from t"}], "only SELECT"),
        (
            [{"type": "sql", "query": "select * from other"}],
            "may read only the table under check ('t'), not 'other'",
        ),
        ([{"type": "sql", "query": "select nope from t"}], "nope"),
        (
            [{"type": "allowed", "column": "id", "values": ["a"]}],
            "value 'a' does not fit a int64 column",
        ),
        ([{"type": "range", "column": "spend"}], "needs min, max or both"),
        ([{"type": "freshness", "column": "seen", "max_age": "soon"}], "not a duration"),
        ([{"type": "schema", "columns": {"id": "integer!"}}], "is no Arrow type"),
        (
            [{"type": "not_null", "column": "id"}, {"type": "not_null", "column": "id"}],
            "two checks are named 'not_null:id'",
        ),
        ([{"type": "mystery", "column": "id"}], "checks.0"),
        ([{"type": "freshness", "column": "country", "max_age": 60}], "cannot apply"),
        (
            [{"type": "sql", "query": "select * from read_csv('/etc/passwd')"}],
            "file system operations are disabled",
        ),
    ],
)
def test_bad_declarations_are_refused(checks: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate(parse_spec(checks), DATA.schema, "t", DataSettings())
    assert message in str(refused.value)


# -- the gate, through the API ---------------------------------------------------------------


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("shop")
    return "shop"


CHECKS = [
    {"type": "not_null", "column": "id"},
    {"type": "unique", "column": "id"},
    {"type": "allowed", "column": "country", "values": ["DE", "FR"]},
    {"type": "range", "column": "spend", "min": 0, "blocking": False},
]


def _rows(ids: list[int | None], country: str = "DE", spend: float = 1.0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "country": pa.array([country] * len(ids), pa.string()),
            "spend": pa.array([spend] * len(ids), pa.float64()),
        }
    )


def test_a_failing_blocking_check_keeps_the_version_unpublished(admin: Any, project: str) -> None:
    first = admin.write_table(project, "c", _rows([1, 2]), checks=CHECKS)
    assert first.published and first.quality["passed"] and first.version == 0
    bad = admin.write_table(project, "c", _rows([2, None, 3], country="XX"))
    assert not bad.published and bad.version == 1
    assert bad.quality["failed"] == ["not_null:id", "unique:id", "allowed:country"]
    by_name = {c["name"]: c for c in bad.quality["checks"]}
    assert by_name["not_null:id"]["failing_rows"] == 1
    assert by_name["not_null:id"]["sample"] == [{"id": None, "country": "XX", "spend": 1.0}]
    assert by_name["unique:id"]["failing_rows"] == 2  # the stored 2 and the new 2
    assert by_name["allowed:country"]["failing_rows"] == 3
    # readers, SQL and the table's metadata stay on the last good version
    assert admin.table_info(project, "c").version == 0
    assert sorted(admin.read_table(project, "c").column("id").to_pylist()) == [1, 2]
    assert admin.sql(project, "select count(*) as n from c").to_pylist() == [{"n": 2}]
    with pytest.raises(NotFound, match=r"c@1 failed its quality checks and was never published"):
        admin.read_table(project, "c", version=1)
    with pytest.raises(NotFound, match="failed its quality checks"):
        admin.sql(project, "select * from c@1")
    statuses = [(v.version, v.status) for v in admin.table_versions(project, "c")]
    assert statuses == [(1, "rejected"), (0, "published")]
    rejected = admin.table_versions(project, "c")[0]
    assert rejected.quality_report["failed"] == bad.quality["failed"]
    # the Delta table was restored: the next write works and builds on the good version
    good = admin.write_table(project, "c", _rows([3, 4], spend=-5.0))
    assert good.published and good.quality["warnings"] == ["range:spend"]
    assert sorted(admin.read_table(project, "c").column("id").to_pylist()) == [1, 2, 3, 4]
    (rejection,) = admin.list_audit(action="table.version.reject")
    assert rejection.resource == f"project:{project}/table:c@1"
    assert json.loads(rejection.detail)["failed"] == bad.quality["failed"]


def test_outside_readers_of_the_delta_folder_see_the_good_version_too(
    server: Any, admin: Any, project: str
) -> None:
    from deltalake import DeltaTable

    from tests.data.test_tables import _location

    admin.write_table(project, "c", _rows([1]), checks=CHECKS)
    admin.write_table(project, "c", _rows([None]))
    delta = DeltaTable(_location(server, project, "c"))
    assert delta.to_pyarrow_table().column("id").to_pylist() == [1]


def test_merge_and_overwrite_are_gated(admin: Any, project: str) -> None:
    admin.write_table(project, "c", _rows([1, 2]), checks=CHECKS)
    merged = admin.write_table(project, "c", _rows([2], country="XX"), mode="merge", key=["id"])
    assert not merged.published and merged.quality["failed"] == ["allowed:country"]
    over = admin.write_table(project, "c", _rows([]), mode="overwrite")
    assert over.published  # an empty table passes these checks
    admin.set_table_checks(project, "c", [*CHECKS, {"type": "row_count", "min": 1}])
    emptied = admin.write_table(project, "c", _rows([]), mode="overwrite")
    assert not emptied.published and emptied.quality["failed"] == ["row_count"]


def test_a_rejected_first_write_leaves_the_table_without_data_and_gated(
    server: Any, admin: Any, project: str
) -> None:
    from deltalake import DeltaTable

    from tests.data.test_tables import _location

    bad = admin.write_table(project, "fresh", _rows([None]), checks=CHECKS)
    assert not bad.published and bad.version == 0
    with pytest.raises(NotFound, match="has no published data yet"):
        admin.read_table(project, "fresh")
    assert admin.table_info(project, "fresh").version is None
    location = _location(server, project, "fresh")
    assert DeltaTable(location).to_pyarrow_table().num_rows == 0  # emptied for outside readers
    good = admin.write_table(project, "fresh", _rows([7]))
    assert good.published and good.version > bad.version
    assert admin.read_table(project, "fresh").column("id").to_pylist() == [7]


def test_declarations_are_validated_and_audited(admin: Any, project: str) -> None:
    admin.write_table(project, "c", _rows([1]))
    with pytest.raises(InvalidInput, match="'nope' that the table does not have"):
        admin.set_table_checks(project, "c", [{"type": "not_null", "column": "nope"}])
    with pytest.raises(InvalidInput, match="bad regex"):
        admin.set_table_checks(
            project, "c", [{"type": "regex", "column": "country", "pattern": "[a-"}]
        )
    with pytest.raises(InvalidInput, match="only SELECT"):
        admin.set_table_checks(project, "c", [{"type": "sql", "query": "drop table c"}])
    assert admin.table_checks(project, "c").checks == []  # nothing stored
    with pytest.raises(NotFound):
        admin.set_table_checks(project, "missing", CHECKS)
    admin.set_table_checks(project, "c", CHECKS)
    assert [c.label() for c in admin.table_checks(project, "c").checks] == [
        "not_null:id",
        "unique:id",
        "allowed:country",
        "range:spend",
    ]
    admin.clear_table_checks(project, "c")
    assert admin.table_checks(project, "c").checks == []
    assert admin.write_table(project, "c", _rows([None])).published  # ungated again
    audited = [
        (e.action, e.outcome) for e in admin.list_audit() if e.action.startswith("table.checks")
    ]
    assert sorted(audited) == sorted(
        [("table.checks.set", "error")] * 4  # three refused, one for a missing table
        + [("table.checks.set", "ok"), ("table.checks.clear", "ok")]
    )


def test_checks_declared_before_the_first_write_are_checked_against_its_data(
    admin: Any, project: str
) -> None:
    with pytest.raises(InvalidInput, match="'nope' that the table does not have"):
        admin.write_table(
            project, "fresh", _rows([1]), checks=[{"type": "not_null", "column": "nope"}]
        )
    assert admin.list_tables(project) == []  # nothing stored: no table, no checks


def test_checks_run_on_demand_without_writing(admin: Any, project: str) -> None:
    admin.write_table(project, "c", _rows([1, 2]))
    admin.write_table(project, "c", _rows([2]))
    with pytest.raises(InvalidInput, match="has no quality checks"):
        admin.check_table(project, "c")
    admin.set_table_checks(project, "c", CHECKS)
    now = admin.check_table(project, "c")
    assert now.version == 1 and now.report["failed"] == ["unique:id"]
    before = admin.check_table(project, "c", version=0)
    assert before.report["passed"]
    tried = admin.check_table(project, "c", checks=[{"type": "row_count", "max": 1}])
    assert tried.report["failed"] == ["row_count"]
    assert len(admin.table_versions(project, "c")) == 2  # nothing was written
    audited = [(e.resource, e.outcome) for e in admin.list_audit(action="table.check")]
    assert sorted(audited) == sorted(
        [(f"project:{project}/table:c", "error")]
        + [(f"project:{project}/table:c@{v}", "ok") for v in (1, 0, 1)]
    )


def test_viewers_read_and_run_checks_but_cannot_declare(
    server: Any, admin: Any, project: str
) -> None:
    from underlay.errors import PermissionDenied

    admin.write_table(project, "c", _rows([1]), checks=CHECKS)
    admin.create_user("vic", password="correct horse battery")
    admin.add_member(project, "vic", "viewer")
    with server.client(admin.create_token("vic", user="vic").token) as vic:
        assert len(vic.table_checks(project, "c").checks) == 4
        assert vic.check_table(project, "c").report["passed"]
        for call in (
            lambda: vic.set_table_checks(project, "c", CHECKS[:1]),
            lambda: vic.clear_table_checks(project, "c"),
        ):
            with pytest.raises(PermissionDenied):
                call()
    assert len(admin.table_checks(project, "c").checks) == 4


def test_another_projects_reader_gets_404(server: Any, admin: Any, project: str) -> None:
    admin.write_table(project, "c", _rows([1]), checks=CHECKS)
    admin.create_user("eve", password="correct horse battery")
    token = admin.create_token("eve", user="eve").token
    with server.client(token) as eve:
        for call in (
            lambda: eve.table_checks(project, "c"),
            lambda: eve.set_table_checks(project, "c", CHECKS),
            lambda: eve.clear_table_checks(project, "c"),
            lambda: eve.check_table(project, "c"),
        ):
            with pytest.raises(NotFound):
                call()
    assert len(admin.table_checks(project, "c").checks) == 4


def test_checks_see_the_stored_masked_values(admin: Any, project: str, tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,email\n1,ada@example.com\n2,bob@example.com\n")
    checks = [{"type": "regex", "column": "email", "pattern": "@example\\.com$"}]
    result = admin.write_table(project, "people", path, checks=checks)
    assert not result.published  # the addresses were tokenised before the checks ran
    assert result.quality["checks"][0]["sample"][0]["email"].startswith("tok_email_")


def test_checks_that_run_out_of_time_fail_with_the_reason() -> None:
    slow = parse_spec(
        [
            {
                "type": "sql",
                "name": "slow",
                "query": "select * from t, range(10000000000) r where r.range < 0",
            },
            {"type": "unique", "column": "id"},
        ]
    )
    settings = DataSettings(sql_timeout_s=0.5)
    report = evaluate(slow, pads.dataset(DATA), "t", settings).to_dict()
    first, second = report["checks"]
    assert not report["passed"]
    assert first["reason"] == "could not be evaluated: the checks ran out of time"
    assert "ran out of time (setting data.sql_timeout_s)" in second["reason"]

"""Data-subject keys: every row about one subject, in every version of every table, through
real HTTP and the SDK, on SQLite and PostgreSQL metadata."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from underlay.errors import InvalidInput, NotFound


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("shop")
    return "shop"


def _versions(found: Any, table: str) -> dict[int, list[dict[str, Any]]]:
    (hit,) = [t for t in found.tables if t.table == table]
    return {v.version: v.rows for v in hit.versions}


def test_subject_rows_across_appends_merges_overwrites_and_tables(admin: Any, project: str) -> None:
    people = pa.table({"customer_id": [1, 2, 3], "plan": ["a", "b", "c"]})
    admin.write_table(project, "customers", people, subject_key="customer_id")
    admin.write_table(project, "customers", pa.table({"customer_id": [4], "plan": ["d"]}))
    change = pa.table({"customer_id": [2], "plan": ["gold"]})
    admin.write_table(project, "customers", change, mode="merge", key=["customer_id"])
    admin.write_table(project, "orders", pa.table({"customer_id": [2, 2, 3], "n": [10, 11, 12]}))
    admin.update_table(project, "orders", subject_key="customer_id")

    found = admin.find_subject(project, "2")
    assert [t.table for t in found.tables] == ["customers", "orders"]
    customers = _versions(found, "customers")
    assert customers == {
        0: [{"customer_id": 2, "plan": "b"}],
        2: [{"customer_id": 2, "plan": "gold"}],
    }  # version 1 appended customer 4 only
    hit = found.tables[0]
    assert (hit.column, hit.stored_as, hit.in_published) == ("customer_id", "raw", True)
    assert [v.operation for v in hit.versions] == ["append", "merge"]
    assert _versions(found, "orders") == {
        0: [{"customer_id": 2, "n": 10}, {"customer_id": 2, "n": 11}]
    }

    rest = pa.table({"customer_id": [1, 3], "plan": ["a", "c"]})
    admin.write_table(project, "customers", rest, mode="overwrite")
    after = admin.find_subject(project, "2")
    assert after.tables[0].in_published is False  # gone now, but its past versions remain
    assert sorted(_versions(after, "customers")) == [0, 2]
    # the merge rewrote the file that held customer 3 beside customer 2: that version's files
    # hold customer 3 too (unchanged), which is what an erasure must know
    assert sorted(_versions(admin.find_subject(project, "3"), "customers")) == [0, 2, 3]
    assert sorted(_versions(admin.find_subject(project, "4"), "customers")) == [1]
    assert admin.find_subject(project, "99").tables == []


def test_a_tokenised_key_is_found_by_its_raw_value(admin: Any, project: str) -> None:
    contacts = pa.table({"email": ["ada@example.com", "bob@example.org"], "n": [1, 2]})
    admin.write_table(project, "contacts", contacts, subject_key="email")
    stored = admin.read_table(project, "contacts").column("email").to_pylist()
    assert all(value.startswith("tok_email_") for value in stored)
    found = admin.find_subject(project, "Ada@Example.com")  # normalised as the masking does
    (hit,) = found.tables
    assert hit.stored_as == "token" and hit.in_published
    (version,) = hit.versions
    assert version.rows == [{"email": stored[0], "n": 1}]
    assert "ada@example.com" not in json.dumps(found.model_dump(mode="json"))
    (entry,) = admin.list_audit(action="table.subject")
    assert "ada@example.com" not in json.dumps(entry.model_dump(mode="json")).lower()


def test_a_key_set_later_indexes_every_version_and_can_be_dropped(admin: Any, project: str) -> None:
    for ids in ([1, 2], [2, 3], [5]):
        admin.write_table(project, "t", pa.table({"id": ids}))
    assert admin.find_subject(project, "2").tables == []
    info = admin.update_table(project, "t", subject_key="id")
    assert info.subject_key == "id"
    assert sorted(_versions(admin.find_subject(project, "2"), "t")) == [0, 1]
    admin.write_table(project, "t", pa.table({"id": [2]}))
    assert sorted(_versions(admin.find_subject(project, "2"), "t")) == [0, 1, 3]
    assert admin.update_table(project, "t", subject_key=None).subject_key is None
    assert admin.find_subject(project, "2").tables == []
    assert admin.table_info(project, "t").subject_key is None


def test_missing_key_columns_are_refused_and_write_nothing(admin: Any, project: str) -> None:
    with pytest.raises(InvalidInput, match=r"subject key 'cid' is not a column of the data"):
        admin.write_table(project, "t", pa.table({"id": [1]}), subject_key="cid")
    assert admin.list_tables(project) == []
    admin.write_table(project, "t", pa.table({"id": [1], "x": [0.5]}))
    with pytest.raises(InvalidInput, match=r"is not a column of the table \(its columns: id, x;"):
        admin.update_table(project, "t", subject_key="cid")
    with pytest.raises(InvalidInput, match="subject key 'x' is double"):
        admin.update_table(project, "t", subject_key="x")
    with pytest.raises(InvalidInput, match="has no subject key, not 'id': change it with"):
        admin.write_table(project, "t", pa.table({"id": [2], "x": [1.0]}), subject_key="id")
    admin.update_table(project, "t", subject_key="id")
    with pytest.raises(InvalidInput, match=r"'id' is not a column of the data \(its columns: x;"):
        admin.write_table(project, "t", pa.table({"x": [1.0]}), evolve=True, mode="overwrite")
    assert admin.table_info(project, "t").version == 0
    outcomes = sorted(e.outcome for e in admin.list_audit(action="table.update"))
    assert outcomes == ["error", "error", "ok"]  # refusals are audited too


def test_outsiders_get_404_and_projects_stay_apart(server: Any, admin: Any, project: str) -> None:
    admin.write_table(project, "t", pa.table({"id": [7]}), subject_key="id")
    admin.create_project("other")
    admin.write_table("other", "t", pa.table({"id": [8]}), subject_key="id")
    assert admin.find_subject("other", "7").tables == []
    admin.create_user("eve", password="correct horse battery")
    token = admin.create_token("eve", user="eve").token
    with server.client(token) as eve:
        with pytest.raises(NotFound):
            eve.find_subject(project, "7")
        with pytest.raises(NotFound):
            eve.update_table(project, "t", subject_key=None)
    assert admin.table_info(project, "t").subject_key == "id"


def test_rows_per_version_are_bounded(admin: Any, project: str) -> None:
    many = pa.table({"id": [1] * 1001 + [2], "n": list(range(1002))})
    admin.write_table(project, "t", many, subject_key="id")
    (hit,) = admin.find_subject(project, "1").tables
    (version,) = hit.versions
    assert version.truncated and len(version.rows) == 1000
    (other,) = admin.find_subject(project, "2").tables[0].versions
    assert not other.truncated and other.rows == [{"id": 2, "n": 1001}]

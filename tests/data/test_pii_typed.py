"""Personal data in columns that are not text, ingested through a real server: a CSV column
``birth_date`` read as dates, ``phone`` and ``card_number`` read as integers. Each is found
by its name (and, for numbers, the validators) and masked: tokenised by default, so no raw
value is stored; later appends are checked against what the table holds."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.conftest import sqlite_url
from underlay.data.pii import PiiType, apply_policies, column_semantics, scan_value
from underlay.data.pii.detectors import phone_digits_ok
from underlay.data.pii.semantics import number_semantics
from underlay.errors import InvalidInput

KEY = b"k" * 32
PEOPLE = "id,birth_date,phone,card_number,amount\n" + "".join(
    f"{i},19{60 + i}-0{1 + i % 9}-1{i % 10},41555501{i:02d},4111111111111111,{i}.5\n"
    for i in range(20)
)


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite: masking does not depend on the metadata backend (test_tables covers both)."""
    return sqlite_url(sqlite_template, tmp_path)


@pytest.fixture
def project(admin: Any) -> str:
    admin.create_project("clinic")
    return "clinic"


def _csv(tmp_path: Path, text: str = PEOPLE) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(text)
    return path


def test_dates_of_birth_and_numbers_are_tokenised_by_default(
    admin: Any, project: str, tmp_path: Path
) -> None:
    result = admin.write_table(project, "people", _csv(tmp_path))
    report = {c["column"]: c for c in result.pii["columns"]}
    assert report["birth_date"]["types"] == ["date_of_birth"]
    assert report["phone"]["types"] == ["phone"] and report["card_number"]["types"] == [
        "credit_card"
    ]
    assert {report[c]["policy"] for c in ("birth_date", "phone", "card_number")} == {"tokenize"}
    stored = admin.read_table(project, "people")
    types = {f.name: str(f.type) for f in stored.schema}
    assert types == {
        "id": "int64",
        "birth_date": "string",
        "phone": "string",
        "card_number": "string",
        "amount": "double",
    }
    rows = stored.to_pylist()
    token = re.compile(r"tok_[a-z_]+_[0-9a-f]{32}")  # a raw digit run can hide in a token's hex
    for row in rows:
        for column in ("birth_date", "phone", "card_number"):
            assert token.fullmatch(row[column]), (column, row[column])
    first = next(r for r in rows if r["id"] == 0)
    assert first["birth_date"] == _text_token(admin, project, "1960-01-10")
    assert first["phone"].startswith("tok_phone_") and first["amount"] == 0.5

    # the next CSV append reads the column as the table holds it (text) and masks it again
    again = admin.write_table(project, "people", _csv(tmp_path))
    assert again.version == 1 and again.num_rows == 40
    # an Arrow append with real dates and integers agrees with what is stored, too
    arrow = pa.table(
        {
            "id": [99],
            "birth_date": [dt.date(1990, 5, 17)],
            "phone": [4155550199],
            "card_number": [4111111111111111],
            "amount": [1.0],
        }
    )
    assert admin.write_table(project, "people", arrow).version == 2
    (late,) = admin.sql(project, "select * from people where id = 99").to_pylist()
    assert late["birth_date"].startswith("tok_date_of_birth_")
    assert late["phone"].startswith("tok_phone_")


def _text_token(admin: Any, project: str, day: str) -> str:
    """The token of ``day`` in a text birth-date column of the project: a date column's
    token of the same day equals it (tables stay joinable)."""
    admin.write_table(project, "probe", pa.table({"birth_date": [day]}), mode="overwrite")
    (probe,) = admin.read_table(project, "probe").column("birth_date").to_pylist()
    assert probe.startswith("tok_date_of_birth_")
    return probe  # type: ignore[no-any-return]


def test_tokens_of_dates_join_a_text_birth_date_column(admin: Any, project: str) -> None:
    admin.write_table(project, "a", pa.table({"dob": [dt.date(1985, 3, 12)], "n": [1]}))
    admin.write_table(project, "b", pa.table({"dob": ["1985-03-12"], "m": [2]}))
    joined = admin.sql(project, "select a.n, b.m from a join b on a.dob = b.dob").to_pylist()
    assert joined == [{"n": 1, "m": 2}]


def test_partial_redact_and_keep_on_a_date_column(admin: Any, project: str, tmp_path: Path) -> None:
    path = _csv(tmp_path)
    partial = admin.write_table(project, "p", path, pii={"birth_date": "partial"})
    assert {c["column"]: c["policy"] for c in partial.pii["columns"]}["birth_date"] == "partial"
    table = admin.read_table(project, "p")
    assert str(table.schema.field("birth_date").type) == "date32[day]"
    years = sorted(set(table.column("birth_date").to_pylist()))
    assert years == [dt.date(1960 + i, 1, 1) for i in range(20)]
    assert admin.write_table(project, "p", path, pii={"birth_date": "partial"}).version == 1
    # without its policy the column would be tokenised (text): refused, with what to do
    with pytest.raises(InvalidInput, match=r"--pii birth_date=POLICY: partial, redact or keep"):
        admin.write_table(project, "p", path)
    assert admin.table_info(project, "p").version == 1

    admin.write_table(project, "r", path, pii={"birth_date": "redact", "phone": "redact"})
    redacted = admin.read_table(project, "r")
    assert set(redacted.column("birth_date").to_pylist()) == {None}
    assert str(redacted.schema.field("phone").type) == "int64"
    assert set(redacted.column("phone").to_pylist()) == {None}

    admin.write_table(project, "k", path, pii={"birth_date": "keep:the clinic needs ages"})
    kept = admin.read_table(project, "k")
    assert dt.date(1960, 1, 10) in kept.column("birth_date").to_pylist()


def test_birth_dates_named_in_other_languages_and_timestamps(admin: Any, project: str) -> None:
    when = dt.datetime(1971, 2, 3, 4, 5, 6)
    data = pa.table({"Geburtsdatum": [dt.date(1971, 2, 3)], "date_of_birth": [when], "n": [1]})
    result = admin.write_table(project, "de", data)
    types = {c["column"]: c["types"] for c in result.pii["columns"]}
    assert types == {"Geburtsdatum": ["date_of_birth"], "date_of_birth": ["date_of_birth"]}
    (row,) = admin.read_table(project, "de").to_pylist()
    assert row["Geburtsdatum"] == row["date_of_birth"]  # the same day, the same token
    assert row["Geburtsdatum"].startswith("tok_date_of_birth_")


def test_numbers_that_are_no_phone_numbers_stay_numbers(admin: Any, project: str) -> None:
    data = pa.table({"phone": [1, 2, 3], "created": [dt.date(2024, 1, 1)] * 3})
    result = admin.write_table(project, "flags", data)
    assert [c for c in result.pii["columns"] if c["types"]] == []
    stored = admin.read_table(project, "flags")
    assert stored.column("phone").to_pylist() == [1, 2, 3]
    assert str(stored.schema.field("created").type) == "date32[day]"  # not a birth date


def test_integer_policies_mask_the_digits() -> None:
    table = pa.table({"phone": [4155550123, None], "card": [4111111111111111, 1]})
    masked, _ = apply_policies(table, {"phone": "partial", "card": "tokenize"}, key=KEY)
    assert masked.column("phone").to_pylist() == ["******0123", None]
    card = masked.column("card").to_pylist()
    assert card[0].startswith("tok_credit_card_") and card[1] == "1"
    with pytest.raises(InvalidInput, match="policies apply to text, date, timestamp and integer"):
        apply_policies(pa.table({"x": [0.5]}), {"x": "redact"}, key=KEY)


@pytest.mark.parametrize(
    ("column", "number", "dob"),
    [
        ("phone", PiiType.PHONE, None),
        ("customer_phone", PiiType.PHONE, None),
        ("mobile_number", PiiType.PHONE, None),
        ("Telefon", PiiType.PHONE, None),
        ("phone_count", None, None),
        ("card_number", PiiType.CREDIT_CARD, None),
        ("cc_num", PiiType.CREDIT_CARD, None),
        ("pan", PiiType.CREDIT_CARD, None),
        ("amount", None, None),
        ("customer_dob", None, PiiType.DATE_OF_BIRTH),
        ("geburtsdatum", None, PiiType.DATE_OF_BIRTH),
        ("date_naissance", None, PiiType.DATE_OF_BIRTH),
        ("place_of_birth", None, None),
    ],
)
def test_what_column_names_say(column: str, number: PiiType | None, dob: PiiType | None) -> None:
    assert number_semantics(column) is number
    assert column_semantics(column) is dob


def test_a_phone_column_makes_bare_digits_a_phone_number() -> None:
    assert [f.type for f in scan_value("4155550123", "phone")] == [PiiType.PHONE]
    assert [f.type for f in scan_value("+442079460958", "mobile")] == [PiiType.PHONE]
    assert scan_value("4155550123", "reference") == []  # no dialling structure elsewhere
    assert scan_value("0123", "phone") == [] and scan_value("0000000000", "phone") == []
    assert not phone_digits_ok("1234567") and phone_digits_ok("14155550123")


def test_partial_keeps_a_timestamp_column_and_its_year() -> None:
    when = pa.array([dt.datetime(1971, 2, 3, 4, 5, 6), None], pa.timestamp("us"))
    masked, report = apply_policies(pa.table({"dob": when}), {"dob": "partial"}, key=KEY)
    assert masked.schema.field("dob").type == pa.timestamp("us")
    assert masked.column("dob").to_pylist() == [dt.datetime(1971, 1, 1), None]
    assert report.columns["dob"].types == [PiiType.DATE_OF_BIRTH]

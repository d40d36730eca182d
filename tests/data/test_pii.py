"""PII detection, column classification and masking (underlay.data.pii)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import string
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from underlay.data.pii import (
    REDACTED,
    PiiType,
    Policy,
    PolicyKind,
    apply_policies,
    card_ok,
    classify_column,
    classify_table,
    column_semantics,
    iban_ok,
    luhn_ok,
    mask_array,
    scan_text,
    scan_value,
    ssn_ok,
    token,
)
from underlay.data.pii.detectors import IBAN_LENGTHS, Finding, resolve_overlaps
from underlay.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]
KEY = b"project-key-1"


def found(text: str) -> list[tuple[PiiType, str]]:
    return [(f.type, text[f.start : f.end]) for f in scan_text(text)]


# --- detectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to alice.smith@example.com today", PiiType.EMAIL, "alice.smith@example.com"),
        ("cc: bob+news@mail.example.co.uk.", PiiType.EMAIL, "bob+news@mail.example.co.uk"),
        ("call +1 415-555-2671 now", PiiType.PHONE, "+1 415-555-2671"),
        ("call +14155552671", PiiType.PHONE, "+14155552671"),
        ("tel (212) 555-0199.", PiiType.PHONE, "(212) 555-0199"),
        ("tel 212.555.0199", PiiType.PHONE, "212.555.0199"),
        ("call 415 555 2671", PiiType.PHONE, "415 555 2671"),
        ("ring +44 20 7946 0958", PiiType.PHONE, "+44 20 7946 0958"),
        ("ring 020 7946 0958", PiiType.PHONE, "020 7946 0958"),
        ("mobile 07700 900123", PiiType.PHONE, "07700 900123"),
        ("Visa 4111 1111 1111 1111 ok", PiiType.CREDIT_CARD, "4111 1111 1111 1111"),
        ("mc 5500-0000-0000-0004", PiiType.CREDIT_CARD, "5500-0000-0000-0004"),
        ("amex 378282246310005", PiiType.CREDIT_CARD, "378282246310005"),
        ("iban DE89 3704 0044 0532 0130 00 BIC X", PiiType.IBAN, "DE89 3704 0044 0532 0130 00"),
        ("to GB82WEST12345698765432.", PiiType.IBAN, "GB82WEST12345698765432"),
        ("ssn 078-05-1120", PiiType.US_SSN, "078-05-1120"),
        ("social security no. 078 05 1120", PiiType.US_SSN, "078 05 1120"),
        ("SSN: 078-05-1120, part 034 71 0391", PiiType.US_SSN, "078-05-1120"),
        ("from 192.168.0.12:", PiiType.IPV4, "192.168.0.12"),
        ("from 2001:db8::1 today", PiiType.IPV6, "2001:db8::1"),
        ("fe80::1ff:fe23:4567:890a", PiiType.IPV6, "fe80::1ff:fe23:4567:890a"),
        ("born 12 March 1985 in Oslo", PiiType.DATE_OF_BIRTH, "12 March 1985"),
        ("DOB: 1985-03-12", PiiType.DATE_OF_BIRTH, "1985-03-12"),
        ("date of birth 03/12/1985", PiiType.DATE_OF_BIRTH, "03/12/1985"),
        ("birthday: 25/12/1985", PiiType.DATE_OF_BIRTH, "25/12/1985"),
        ("born on March 12, 1985", PiiType.DATE_OF_BIRTH, "March 12, 1985"),
    ],
)
def test_scan_text_finds_each_type_at_its_offsets(text: str, kind: PiiType, value: str) -> None:
    assert found(text) == [(kind, value)]


@pytest.mark.parametrize(
    "text",
    [
        "order ORD-20230415-8841 shipped",
        "invoice INV-2023-004512",
        "on 2023-04-15 and 15/04/2023",
        "total $1,234.56 or EUR 12345.00",
        "version 2.14.3, build 10.0.19045.3803",
        "ref #4829104829",
        "tracking 500794765155",
        "at 12:30:45",
        "sku 826-832-604",
        "ts 1700000000",
        "mac aa:bb:cc:dd:ee:ff",
        "qty 3 x 0447 2101",
        "area code 911-555-1234 is not assigned",
        "exchange 415-155-2671 starts with 1",
        "call +1 911 555 1234 (N11 area)",
        "order ORD-415-555-2671 and item A7.212.555.0199",
        "DOB unknown, ref 7, visit 2023-04-15",
        "card 4111 1111 1111 1112 fails Luhn",
        "mixed separators 4111 1111-1111 1111",
        "iban DE89 3704 0044 0532 0130 01 has a bad checksum",
        "ssns 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000",
        "part 078 05 1120 (spaced, no SSN context)",
        "ip 256.1.1.1, 01.2.3.4 and 1.2.3.4.5",
        "unspecified ::",
        "meeting 2023-04-15 (no birth context)",
        "born 1850-01-01 is too early",
        f"born {date.today() + timedelta(days=1)} is in the future",
        "email alice..smith@example.com or @example.com",
    ],
)
def test_distractors_are_not_pii(text: str) -> None:
    assert found(text) == []


def test_findings_are_ordered_without_overlaps_and_carry_scores() -> None:
    text = "a@example.com then 4111111111111111 then +1 415 555 2671"
    findings = scan_text(text)
    assert [f.type for f in findings] == [PiiType.EMAIL, PiiType.CREDIT_CARD, PiiType.PHONE]
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))
    assert all(0 < f.score <= 1 for f in findings)


def test_overlaps_resolve_to_the_higher_score_then_the_longer_span() -> None:
    phone = Finding(PiiType.PHONE, 0, 10, 0.75)
    card = Finding(PiiType.CREDIT_CARD, 0, 19, 0.95)
    short = Finding(PiiType.EMAIL, 20, 25, 0.95)
    long = Finding(PiiType.IBAN, 20, 30, 0.95)
    assert resolve_overlaps([phone, short, long, card]) == [card, long]


def test_the_documented_example() -> None:
    assert scan_text("call +1 415-555-2671 or mail ada@example.com") == [
        Finding(PiiType.PHONE, 5, 20, 0.75),
        Finding(PiiType.EMAIL, 29, 44, 0.95),
    ]


@pytest.mark.parametrize(
    ("prefix", "length", "wrong"),
    [("4", 13, 14), ("4", 16, 17), ("4", 19, 18), ("51", 16, 15), ("2720", 16, 17),
     ("34", 15, 16), ("6011", 19, 15), ("65", 16, 15), ("3530", 16, 15), ("305", 14, 13),
     ("36", 14, 13), ("62", 16, 15), ("50", 16, 15), ("58", 19, 15)],
)  # fmt: skip
def test_each_issuer_prefix_at_its_lengths_is_a_card(prefix: str, length: int, wrong: int) -> None:
    assert card_ok(_luhn_complete(prefix + "0" * (length - len(prefix) - 1)))
    assert not card_ok(_luhn_complete(prefix + "0" * (wrong - len(prefix) - 1)))


def test_validators() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert card_ok("4111111111111111") and not card_ok("9111111111111111")  # no issuer 9
    assert not card_ok("41111111111111")  # Visa has no 14-digit numbers
    assert iban_ok("NL91ABNA0417164300") and not iban_ok("NL91ABNA04171643001")
    assert not iban_ok("XX91ABNA0417164300")  # unknown country
    assert iban_ok(_with_check("DE", "3704004405320130001"[:18]))
    assert not iban_ok(_with_check("DE", "3704004405320130001"))  # checksum right, length wrong
    assert ssn_ok("078051120") and not ssn_ok("666051120")


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("name", PiiType.PERSON),
        ("first_name", PiiType.PERSON),
        ("Surname", PiiType.PERSON),
        ("customerName", PiiType.PERSON),
        ("full_name", PiiType.PERSON),
        ("billing_last_name", PiiType.PERSON),
        ("dob", PiiType.DATE_OF_BIRTH),
        ("birth_date", PiiType.DATE_OF_BIRTH),
        ("patient_date_of_birth", PiiType.DATE_OF_BIRTH),
        ("username", None),
        ("user_name", None),
        ("file_name", None),
        ("product", None),
        ("created_at", None),
    ],
)
def test_column_semantics(column: str, kind: PiiType | None) -> None:
    assert column_semantics(column) is kind


def test_person_names_need_a_name_column_and_a_name_shape() -> None:
    assert [f.type for f in scan_value("Ada Lovelace", "full_name")] == [PiiType.PERSON]
    assert [f.type for f in scan_value("Ludwig van Beethoven", "name")] == [PiiType.PERSON]
    assert [f.type for f in scan_value("O'Brien-Smith", "last_name")] == [PiiType.PERSON]
    assert scan_value("Ada Lovelace", "product") == []
    assert scan_value("ada lovelace", "full_name") == []
    assert scan_value("Ada lovelace", "full_name") == []  # only particles may be lowercase
    assert scan_value("Order 42", "name") == []


def test_a_birth_date_column_needs_no_context_word() -> None:
    assert [f.type for f in scan_value("1985-03-12", "dob")] == [PiiType.DATE_OF_BIRTH]
    assert scan_value("1985-03-12", "shipped_on") == []
    assert scan_value("1850-03-12", "dob") == []


# --- properties ---------------------------------------------------------------------------


def _luhn_complete(body: str) -> str:
    return next(body + d for d in string.digits if luhn_ok(body + d))


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(
        st.sampled_from([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("37", 15), ("6011", 16)])
    )
    body = prefix + draw(st.text(string.digits, min_size=length - len(prefix) - 1,
                                 max_size=length - len(prefix) - 1))  # fmt: skip
    return _luhn_complete(body)


def _with_check(country: str, bban: str) -> str:
    numeric = int((bban + country + "00").translate({ord(c): str(int(c, 36)) for c in country}))
    return f"{country}{98 - numeric % 97:02d}{bban}"


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(IBAN_LENGTHS)))
    n = IBAN_LENGTHS[country] - 4
    return _with_check(country, draw(st.text(string.digits, min_size=n, max_size=n)))


ssns = st.builds(
    lambda a, g, s: f"{a:03d}-{g:02d}-{s:04d}",
    st.integers(1, 899).filter(lambda a: a != 666),
    st.integers(1, 99),
    st.integers(1, 9999),
)


def _corrupt(value: str, draw: st.DrawFn, first: int = 0) -> str:
    positions = [i for i, ch in enumerate(value) if ch.isdigit() and i >= first]
    i = draw(st.sampled_from(positions))
    digit = draw(st.sampled_from([d for d in string.digits if d != value[i]]))
    return value[:i] + digit + value[i + 1 :]


@settings(max_examples=150, deadline=None)
@given(cards())
def test_valid_cards_are_found(number: str) -> None:
    assert found(f"paid with {number} yesterday") == [(PiiType.CREDIT_CARD, number)]


@settings(max_examples=150, deadline=None)
@given(cards(), st.data())
def test_a_single_digit_error_in_a_card_is_not_a_card(number: str, data: st.DataObject) -> None:
    wrong = _corrupt(number, data.draw)
    assert PiiType.CREDIT_CARD not in [kind for kind, _ in found(f"paid with {wrong} ok")]


@settings(max_examples=150, deadline=None)
@given(ibans())
def test_valid_ibans_are_found(iban: str) -> None:
    assert found(f"refund to {iban} please") == [(PiiType.IBAN, iban)]


@settings(max_examples=150, deadline=None)
@given(ibans(), st.data())
def test_a_single_digit_error_in_an_iban_is_not_an_iban(iban: str, data: st.DataObject) -> None:
    wrong = _corrupt(iban, data.draw, first=2)
    assert PiiType.IBAN not in [kind for kind, _ in found(f"refund to {wrong} please")]


@settings(max_examples=150, deadline=None)
@given(ssns)
def test_valid_ssns_are_found(ssn: str) -> None:
    assert found(f"ssn {ssn}.") == [(PiiType.US_SSN, ssn)]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40), st.binary(min_size=32, max_size=32),
       st.binary(min_size=32, max_size=32))  # fmt: skip
def test_tokens_are_deterministic_per_key_and_differ_across_keys(
    value: str, key: bytes, other: bytes
) -> None:
    first = token(value, PiiType.EMAIL, key)
    assert first == token(value, PiiType.EMAIL, key)
    assert re.fullmatch(r"tok_email_[0-9a-f]{32}", first)
    if other != key:
        assert first != token(value, PiiType.EMAIL, other)


def test_tokens_are_a_keyed_hmac_of_the_normalised_value() -> None:
    digest = hmac.new(KEY, b"email\0ada@example.com", hashlib.sha256).hexdigest()[:32]
    assert token("Ada@Example.com", PiiType.EMAIL, KEY) == f"tok_email_{digest}"
    card = token("4111 1111 1111 1111", PiiType.CREDIT_CARD, KEY)
    assert card == token("4111-1111-1111-1111", PiiType.CREDIT_CARD, KEY)
    assert token("DE89 3704 0044 0532 0130 00", PiiType.IBAN, KEY) == token(
        "DE89370400440532013000", PiiType.IBAN, KEY
    )


pii_values = st.one_of(
    st.builds(lambda u, d: f"{u}@{d}.example.com",
              st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
              st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
    cards(),
    ibans(),
    ssns,
    st.builds(lambda *o: ".".join(map(str, o)), *[st.integers(0, 255)] * 4),
    st.builds(lambda a, e, s: f"+1 {a} {e} {s:04d}",
              st.integers(200, 899).filter(lambda a: a % 100 != 11),
              st.integers(200, 999), st.integers(0, 9999)),
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    st.lists(pii_values, min_size=1, max_size=4), st.sampled_from(["partial", "tokenize", "redact"])
)
def test_masking_never_leaves_a_detected_value(values: list[str], policy: str) -> None:
    text = "note: " + " and ".join(values) + "."
    assert len(scan_text(text)) == len(values)
    masked = mask_array(pa.array([text, None]), PolicyKind(policy), "notes", KEY).to_pylist()
    assert masked[1] is None
    assert scan_text(masked[0]) == []
    for value in values:
        assert value not in masked[0]


# --- classification -----------------------------------------------------------------------


def test_classify_column_reports_the_share_of_each_type() -> None:
    values = [f"user{i}@example.com" for i in range(900)] + [
        f"+1 415 555 {i:04d}" for i in range(100)
    ]
    result = classify_column("contact", values + [None] * 50)
    assert result.sampled == 1000
    assert result.shares == {PiiType.EMAIL: 0.9, PiiType.PHONE: 0.1}
    assert result.types == [PiiType.EMAIL, PiiType.PHONE] and result.is_pii
    assert result.to_dict()["types"] == ["email", "phone"]


def test_classification_samples_with_a_seed() -> None:
    values = pa.chunked_array([[f"a{i}@example.com" if i % 3 else "none" for i in range(3000)]])
    first = classify_column("c", values, sample=200, seed=7)
    assert first.sampled == 200
    assert first == classify_column("c", values, sample=200, seed=7)
    assert 0.5 < first.shares[PiiType.EMAIL] < 0.8
    assert first != classify_column("c", values, sample=200, seed=8)


def test_the_verdict_follows_the_threshold() -> None:
    notes = ["call me at +1 415 555 2671"] * 5 + ["thanks, all good"] * 95
    assert classify_column("notes", notes).is_pii
    assert not classify_column("notes", notes, threshold=0.1).is_pii
    assert classify_column("notes", notes, threshold=0.1).shares == {PiiType.PHONE: 0.05}


def test_classify_table_covers_every_string_like_column() -> None:
    table = pa.table(
        {
            "full_name": ["Ada Lovelace", "Alan Turing"],
            "email": pa.array(["ada@example.com", "alan@example.org"]).dictionary_encode(),
            "ip": pa.array(["10.0.0.1", "10.0.0.2"], pa.large_string()),
            "ip6": pa.array(["2001:db8::1", "2001:db8::2"], pa.string_view()),
            "age": [36, 41],
            "city": ["London", "Wilmslow"],
        }
    )
    result = classify_table(table)
    assert sorted(result) == ["city", "email", "full_name", "ip", "ip6"]
    assert result["ip6"].types == [PiiType.IPV6]
    assert result["full_name"].types == [PiiType.PERSON]
    assert result["email"].types == [PiiType.EMAIL]
    assert result["ip"].types == [PiiType.IPV4]
    assert not result["city"].is_pii


# --- policies -----------------------------------------------------------------------------


def customers() -> pa.Table:
    return pa.table(
        {
            "id": [1, 2, 3],
            "email": ["ada@example.com", "alan@example.org", None],
            "phone": ["+1 415 555 2671", "(212) 555-0199", "+44 20 7946 0958"],
            "notes": ["card 4111 1111 1111 1111 on file", "nothing", "ssn 078-05-1120"],
            "city": ["London", "Wilmslow", "Paris"],
        }
    )


def test_privacy_by_default_tokenizes_every_pii_column_without_a_policy() -> None:
    masked, report = apply_policies(customers(), key=KEY)
    assert masked.column("id").to_pylist() == [1, 2, 3]
    assert masked.column("city").to_pylist() == ["London", "Wilmslow", "Paris"]
    emails = masked.column("email").to_pylist()
    assert re.fullmatch(r"tok_email_[0-9a-f]{32}", emails[0]) and emails[2] is None
    assert masked.column("phone").to_pylist()[0].startswith("tok_phone_")
    notes = masked.column("notes").to_pylist()
    assert notes[0].startswith("card tok_credit_card_") and notes[0].endswith(" on file")
    assert notes[1] == "nothing"
    entry = report.columns["email"].to_dict()
    assert entry["policy"] == "tokenize" and entry["default"] is True
    assert entry["types"] == ["email"] and entry["shares"] == {"email": 1.0}
    assert report.columns["city"].policy is None


def test_tokens_keep_tables_joinable_per_key() -> None:
    other = pa.table({"email": ["alan@example.org", "grace@example.net"], "amount": [5, 7]})
    a, _ = apply_policies(customers(), key=KEY)
    b, _ = apply_policies(other, key=KEY)
    joined = a.join(b, "email", join_type="inner").select(["id", "amount"]).to_pylist()
    assert joined == [{"id": 2, "amount": 5}]
    c, _ = apply_policies(other, key=b"another-key")
    assert set(c.column("email").to_pylist()).isdisjoint(b.column("email").to_pylist())


def test_explicit_policies_redact_partial_and_keep() -> None:
    policies = {
        "email": "partial",
        "phone": Policy.partial(),
        "notes": "redact",
        "city": Policy.keep("shipping needs the city"),
    }
    masked, report = apply_policies(customers(), policies, key=KEY)
    assert masked.column("email").to_pylist() == ["***@example.com", "***@example.org", None]
    assert masked.column("phone").to_pylist() == ["+* *** *** 2671", "(***) ***-0199",
                                                  "+** ** **** 0958"]  # fmt: skip
    assert masked.column("notes").to_pylist() == [REDACTED] * 3
    assert masked.column("city") == customers().column("city")
    assert report.columns["city"].to_dict()["justification"] == "shipping needs the city"
    assert report.columns["email"].default is False


def test_partial_masks_per_type() -> None:
    cases = {
        "4111-1111-1111-1111": "****-****-****-1111",
        "078-05-1120": "***-**-1120",
        "DE89 3704 0044 0532 0130 00": "DE** **** **** **** **30 00",
        "192.168.0.12": "192.168.*.*",
        "2001:db8::1": "2001:db8:*",
        "DOB 1985-03-12": "DOB 1985-**-**",
    }
    masked = mask_array(pa.array(list(cases)), PolicyKind.PARTIAL, "notes").to_pylist()
    assert masked == list(cases.values())
    names = mask_array(pa.array(["Ada Lovelace"]), PolicyKind.PARTIAL, "full_name")
    assert names.to_pylist() == ["A*** L***"]


def test_keep_without_a_justification_is_refused() -> None:
    with pytest.raises(InvalidInput, match="policy 'keep' needs a justification"):
        Policy.keep("  ")
    with pytest.raises(InvalidInput, match="policy 'keep' needs a justification"):
        apply_policies(customers(), {"email": "keep"}, key=KEY)
    masked, _ = apply_policies(customers(), {"email": "keep: legal hold 2024-17"}, key=KEY)
    assert masked.column("email") == customers().column("email")


def test_a_policy_naming_a_missing_column_is_refused_before_masking() -> None:
    # No key either: the missing column is reported, not the key.
    with pytest.raises(
        InvalidInput,
        match=r"PII policy names missing column\(s\) 'e_mail', 'zip'; the table has: id, ",
    ):
        apply_policies(customers(), {"zip": "redact", "e_mail": "partial", "email": "redact"})


@pytest.mark.parametrize(
    ("policies", "key", "message"),
    [
        (
            {"score": "redact"},
            KEY,
            "PII policy on column 'score' of type double: policies apply to text, date, "
            "timestamp and integer columns",
        ),
        (
            {"email": "hash"},
            KEY,
            "unknown PII policy 'hash' \\(choose redact, partial, tokenize, keep\\)",
        ),
        ({}, b"", "tokenizing column\\(s\\) email, phone, notes needs a non-empty key"),
    ],
)
def test_bad_policies_are_invalid_input(policies: dict[str, str], key: bytes, message: str) -> None:
    table = customers().append_column("score", pa.array([0.5, 1.5, 2.5]))
    with pytest.raises(InvalidInput, match=message):
        apply_policies(table, policies, key=key)


def test_masking_keeps_nulls_chunks_and_string_types() -> None:
    table = pa.table(
        {
            "email": pa.chunked_array(
                [["a@example.com", None], ["a@example.com"]], pa.large_string()
            ),
            "contact_email": pa.array(["b@example.com", "b@example.com", None]).dictionary_encode(),
        }
    )
    masked, _ = apply_policies(table, {"contact_email": "redact"}, key="text key")
    assert masked.schema.field("email").type == pa.large_string()
    emails = masked.column("email").to_pylist()
    assert emails[0] == emails[2] == token("a@example.com", PiiType.EMAIL, b"text key")
    assert emails[1] is None
    assert masked.column("contact_email").to_pylist() == [REDACTED, REDACTED, None]


# --- benchmark ----------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_quick_mode_prints_its_figures() -> None:
    pytest.importorskip("presidio_analyzer")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pii.py"), "--records", "2000"],
        capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    out = run.stdout
    assert "corpus: 2000 records, seed 0" in out
    assert re.search(r"^ours: [\d,]+ records/s$", out, re.M)
    assert re.search(r"^presidio: [\d,]+ records/s$", out, re.M)
    assert re.search(r"^ratio: [\d.]+x \(target >= 50x\)$", out, re.M)
    for kind in ("email", "phone", "us_ssn", "credit_card", "ip", "iban"):
        assert re.search(rf"^{kind} +(\d\.\d{{3}} +){{3}}\d\.\d{{3}}$", out, re.M), kind

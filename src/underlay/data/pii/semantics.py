"""What a column's name says about its values: person names, dates of birth, phone and card
numbers.

With no NLP model, a person name is recognised only in a column named for one (``name``,
``first_name``, ``surname``, ``customerName`` ...) and only when the value has a name's shape:
one to five words, each a capitalised run of letters (apostrophes and hyphens allowed), with
lowercase particles such as ``van``, ``de`` or ``bin`` between them. A birth-date column
(``dob``, ``birth_date``, ``birthday`` ...) makes any date in the plausible birth range a date
of birth, without the context word free text needs. :func:`scan_value` adds these whole-value
findings to what :func:`~underlay.data.pii.detectors.scan_text` finds.

A phone column (``phone``, ``mobile``, ``customer_phone`` ...) makes a bare run of 8 to 15
digits that passes :func:`~underlay.data.pii.detectors.phone_digits_ok` a phone number (free
text needs the formatting). :func:`number_semantics` names the integer columns whose values
are phone or card numbers; :func:`~underlay.data.pii.classify.classify_table` scans those (and
date columns named for a birth date) besides the text columns.
"""

from __future__ import annotations

import re

from underlay.data.pii.detectors import (
    Finding,
    PiiType,
    birth_dates,
    phone_digits_ok,
    resolve_overlaps,
    scan_text,
)

_NAME_WORDS = frozenset(
    {"name", "fullname", "firstname", "lastname", "surname", "forename", "givenname",
     "familyname", "middlename", "maidenname", "nickname"}
)  # fmt: skip
_NAME_OWNERS = frozenset(
    {"customer", "contact", "person", "patient", "employee", "client", "holder", "cardholder",
     "owner", "recipient", "sender", "beneficiary", "member", "applicant", "student", "user"}
)  # fmt: skip
_NOT_NAMES = frozenset({"username", "user_name", "filename", "file_name", "hostname"})
_DOB_COLUMNS = frozenset(
    {"dob", "birthdate", "birthday", "dateofbirth", "birth", "borndate", "birthdt", "bdate",
     "geburtsdatum", "gebdatum", "gebdat", "geboortedatum", "datenaissance", "datedenaissance",
     "fechanacimiento", "fechadenacimiento", "datanascita", "datadinascita", "fodelsedatum",
     "dataurodzenia", "datanascimento", "datadenascimento"}
)  # fmt: skip
_DOB_TAILS = _DOB_COLUMNS - {"birth"}  # "place_of_birth" is no date
_PHONE_WORDS = frozenset(
    {"phone", "telephone", "tel", "mobile", "cell", "cellphone", "mobilephone", "phonenumber",
     "telephonenumber", "mobilenumber", "cellnumber", "phoneno", "telno", "mobileno", "msisdn",
     "fax", "faxnumber", "telefon", "telefono", "telefone", "telephon", "handy"}
)  # fmt: skip
_CARD_WORDS = frozenset(
    {"cardnumber", "cardno", "cardnum", "ccnumber", "ccnum", "ccno", "ccn", "creditcard",
     "creditcardnumber", "creditcardno", "debitcard", "debitcardnumber", "pan",
     "primaryaccountnumber"}
)  # fmt: skip
_BARE_PHONE = re.compile(r"\+?[0-9]{8,15}")
_PARTICLES = frozenset(
    {"van", "von", "der", "den", "de", "del", "della", "la", "le", "du", "da", "di", "dos",
     "bin", "bint", "al", "ibn", "y", "ter", "ten"}
)  # fmt: skip
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['\u2019-](?=[^\W\d_]))*\.?")


def _words(column: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", column)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def column_semantics(column: str | None) -> PiiType | None:
    """The PII type a column's name implies: PERSON, DATE_OF_BIRTH, or None."""
    if not column:
        return None
    words = _words(column)
    joined = "".join(words)
    if "_".join(words) in _NOT_NAMES:
        return None
    if joined in _DOB_COLUMNS or (len(words) > 1 and "".join(words[-3:]) == "dateofbirth"):
        return PiiType.DATE_OF_BIRTH
    if len(words) > 1 and (words[-1] in _DOB_TAILS or "".join(words[-2:]) in _DOB_TAILS):
        return PiiType.DATE_OF_BIRTH
    if joined in _NAME_WORDS or (len(words) > 1 and "".join(words[-2:]) in _NAME_WORDS):
        return PiiType.PERSON
    if len(words) == 2 and words[0] in _NAME_OWNERS and words[1] == "name":
        return PiiType.PERSON
    return None


def number_semantics(column: str | None) -> PiiType | None:
    """The PII type a column's name implies for numbers: PHONE, CREDIT_CARD, or None."""
    words = _words(column or "")
    tails = {"".join(words[-n:]) for n in (1, 2, 3) if len(words) >= n}
    if tails & _PHONE_WORDS:
        return PiiType.PHONE
    if tails & _CARD_WORDS:
        return PiiType.CREDIT_CARD
    return None


def looks_like_name(value: str) -> bool:
    """A personal name's shape: 1 to 5 capitalised words of letters, particles allowed."""
    words = value.split()
    if not 1 <= len(words) <= 5 or len(value) > 80:
        return False
    capitalised = 0
    for word in words:
        if not _WORD.fullmatch(word):
            return False
        if word[0].isupper():
            capitalised += 1
        elif word.lower() not in _PARTICLES:
            return False
    return capitalised > 0


def _is_birth_date(value: str) -> bool:
    return any(True for _ in birth_dates(value, context=False))


def _whole(value: str, kind: PiiType, score: float) -> Finding:
    start = len(value) - len(value.lstrip())
    return Finding(kind, start, len(value.rstrip()), score)


def scan_value(value: str, column: str | None = None) -> list[Finding]:
    """:func:`scan_text` plus what the column's name implies for this value."""
    findings = scan_text(value)
    semantics = column_semantics(column)
    if semantics is PiiType.PERSON and looks_like_name(value.strip()):
        findings.append(_whole(value, PiiType.PERSON, 0.6))
    elif semantics is PiiType.DATE_OF_BIRTH and _is_birth_date(value.strip()):
        findings.append(_whole(value, PiiType.DATE_OF_BIRTH, 0.85))
    elif not findings and number_semantics(column) is PiiType.PHONE:
        bare = value.strip()
        if _BARE_PHONE.fullmatch(bare) and phone_digits_ok(bare.lstrip("+")):
            findings.append(_whole(value, PiiType.PHONE, 0.75))
    return resolve_overlaps(findings) if len(findings) > 1 else findings

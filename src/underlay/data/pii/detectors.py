"""PII detectors: a cheap regex finds candidates, a validator decides.

Every detector is a precise check, not just a pattern: cards pass Luhn and an issuer range,
IBANs pass ISO 13616 mod-97 at their country's length, SSNs obey the area/group/serial rules,
IP addresses parse with :mod:`ipaddress`, phone numbers need a dialling structure (a ``+``
country code, a NANP area and exchange code, or a trunk ``0`` national form) and may not touch
the letters, dashes or dots of an order id, a date, an amount or a version string. Dates of
birth need a context word in free text, or a birth-date column. Person names have no NLP model
behind them: they are found only in a column whose name says it holds names, by value shape.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class PiiType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    CREDIT_CARD = "credit_card"
    IBAN = "iban"
    US_SSN = "us_ssn"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DATE_OF_BIRTH = "date_of_birth"
    PERSON = "person"


@dataclass(frozen=True, slots=True)
class Finding:
    """A detected value: ``text[start:end]`` holds PII of ``type``, with confidence ``score``."""

    type: PiiType
    start: int
    end: int
    score: float


Span = tuple[int, int]
CONTEXT_WINDOW = 40  # how far before a value a context word may stand

# --- email --------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w@-])"
)


def _emails(text: str) -> Iterator[Span]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        if ".." not in m.group():
            yield m.span()


# --- phone --------------------------------------------------------------------------------

# Each branch starts with a plain character and looks behind only after it: the regex engine
# skips to candidate characters fast instead of testing a lookbehind at every position.
_B = r"[\w+./:-]"  # what may not come right before a phone number
_PHONE = re.compile(
    rf"(?:\+(?<!{_B}\+)(?P<intl>[1-9][0-9]{{0,2}}(?:[ .-]?\([0-9]{{1,4}}\))?"
    r"(?:[ .-]?[0-9]{1,5}){1,5})"
    rf"|(?P<trunk>0(?<!{_B}0)[0-9]{{1,4}}(?: [0-9]{{2,8}}){{1,3}})"
    rf"|(?P<nanp>\((?<!{_B}\()[0-9]{{3}}\) ?[0-9]{{3}}[-.][0-9]{{4}}"
    rf"|[2-9](?<!{_B}[2-9])[0-9]{{2}}(?P<sep>[-. ])[0-9]{{3}}(?P=sep)[0-9]{{4}}))"
    r"(?![\w-]|[.,/:][0-9])"
)


def _nanp_ok(digits: str) -> bool:
    area, exchange = digits[:3], digits[3:6]
    return area[0] in "23456789" and area[1:] != "11" and exchange[0] in "23456789"


def phone_digits_ok(digits: str) -> bool:
    """Whether a bare run of digits (no ``+``, no formatting: a phone column's value, or an
    integer) can be a phone number: a NANP number of 10 digits (11 with the leading 1), or an
    international or national one of 8 to 15 digits that starts with no 0."""
    if not digits.isdigit() or not 8 <= len(digits) <= 15 or len(set(digits)) == 1:
        return False
    if len(digits) == 11 and digits[0] == "1":
        return _nanp_ok(digits[1:])
    if len(digits) == 10:
        return _nanp_ok(digits) or digits[0] != "0"
    return digits[0] != "0"


def _glued(m: re.Match[str]) -> bool:
    """A space-grouped match right after another digit group (``0044 0532 0130``) is the
    tail of a longer number, such as an IBAN or an account number, not a value of its own."""
    start = m.start()
    return (
        " " in m.group()
        and start >= 2
        and m.string[start - 1] == " "
        and m.string[start - 2].isdigit()
    )


def _phone_ok(m: re.Match[str]) -> bool:
    if _glued(m):
        return False
    digits = re.sub(r"\D", "", m.group())
    if m.group("intl"):
        if digits.startswith("1"):
            return len(digits) == 11 and _nanp_ok(digits[1:])
        return 8 <= len(digits) <= 15
    if m.group("nanp"):
        return _nanp_ok(digits)
    return 10 <= len(digits) <= 11 and digits[1] != "0"


def has_context(words: re.Pattern[str], text: str, start: int) -> bool:
    """Whether a context word stands before ``start``, within :data:`CONTEXT_WINDOW`
    characters and with no other number between it and the value (it names this value)."""
    ends = [m.end() for m in words.finditer(text, max(0, start - CONTEXT_WINDOW), start)]
    return bool(ends) and not any(ch.isdigit() for ch in text[ends[-1] : start])


def _validated(
    pattern: re.Pattern[str], text: str, ok: Callable[[re.Match[str]], bool]
) -> Iterator[Span]:
    """Spans of matches that pass ``ok``; after a failed one, search again one character on,
    so a candidate that swallowed its neighbour does not hide it."""
    pos = 0
    while m := pattern.search(text, pos):
        if ok(m):
            yield m.span()
            pos = m.end()
        else:
            pos = m.start() + 1


def _phones(text: str) -> Iterator[Span]:
    return _validated(_PHONE, text, _phone_ok)


# --- credit cards -------------------------------------------------------------------------

_CARD = re.compile(
    r"[2-6](?<![\w.,/-][2-6])[0-9]{3}(?P<sep>[ -]?)[0-9]{2,6}(?:(?P=sep)[0-9]{1,7}){1,3}"
    r"(?![\w-]|[.,][0-9])"
)

# (first digits range, allowed lengths): Visa, Mastercard, Amex, Discover, JCB, Diners,
# UnionPay, Maestro.
_ISSUERS: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),
    (51, 55, frozenset({16})),
    (2221, 2720, frozenset({16})),
    (34, 34, frozenset({15})),
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset(range(16, 20))),
    (644, 649, frozenset(range(16, 20))),
    (65, 65, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),
    (300, 305, frozenset(range(14, 20))),
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(14, 20))),
    (62, 62, frozenset(range(16, 20))),
    (50, 50, frozenset(range(16, 20))),
    (56, 58, frozenset(range(16, 20))),
)


_IIN = tuple((low, high, len(str(low)), lengths) for low, high, lengths in _ISSUERS)


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_ok(digits: str) -> bool:
    """A card number: 12 to 19 digits, an issuer's prefix and length, and Luhn."""
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        return False
    for low, high, width, lengths in _IIN:
        if low <= int(digits[:width]) <= high and len(digits) in lengths:
            return luhn_ok(digits)
    return False


def _card_match_ok(m: re.Match[str]) -> bool:
    return not _glued(m) and card_ok(m.group().replace(m.group("sep") or "-", ""))


def _cards(text: str) -> Iterator[Span]:
    return _validated(_CARD, text, _card_match_ok)


# --- IBAN ---------------------------------------------------------------------------------

IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_IBAN = re.compile(
    r"[A-Z](?<![\w-][A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w-])"
)


_LETTER_VALUES = {ord(ch): str(10 + i) for i, ch in enumerate(string.ascii_uppercase)}


def iban_ok(iban: str) -> bool:
    """ISO 13616: the country's length and ``mod 97 == 1`` over the rearranged digits."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban.isascii():
        return False
    return int((iban[4:] + iban[:4]).translate(_LETTER_VALUES)) % 97 == 1


def _iban_end(text: str, start: int, length: int) -> int:
    """Where an IBAN of ``length`` characters starting at ``start`` ends, spaces included."""
    seen, i = 0, start
    while seen < length:
        seen += text[i] != " "
        i += 1
    return i


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(m.group()[:2], 0)
        if len(m.group().replace(" ", "")) < length:
            continue
        # The optional trailing group may have run into the next word: cut at the length.
        end = _iban_end(text, m.start(), length)
        if (end == len(text) or not text[end].isalnum()) and iban_ok(
            text[m.start() : end].replace(" ", "")
        ):
            yield m.start(), end


# --- US SSN -------------------------------------------------------------------------------

_SSN = re.compile(
    r"[0-8](?<![\w.,/-][0-8])[0-9]{2}(?P<sep>[- ])[0-9]{2}(?P=sep)[0-9]{4}(?![\w-]|[.,/][0-9])"
)


def ssn_ok(digits: str) -> bool:
    """SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


_SSN_CONTEXT = re.compile(r"\b(?:ssn|ss#|social security|soc\.? sec)", re.I)


def _ssn_match_ok(m: re.Match[str]) -> bool:
    if _glued(m) or not ssn_ok(m.group().replace(m.group("sep"), "")):
        return False
    # 123-45-6789 is an SSN's own shape; 123 45 6789 is also a part or form number: it needs
    # a context word before it.
    return m.group("sep") == "-" or has_context(_SSN_CONTEXT, m.string, m.start())


def _ssns(text: str) -> Iterator[Span]:
    return _validated(_SSN, text, _ssn_match_ok)


# --- IP addresses -------------------------------------------------------------------------

_IPV4 = re.compile(r"[0-9](?<![\w.-][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![\w-]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?:\.\d{1,3}){0,3}(?![\w:])"
)


def _ipv4s(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        if all(
            int(part) < 256 and (part == "0" or part[0] != "0") for part in m.group().split(".")
        ):
            yield m.span()


def _ipv6s(text: str) -> Iterator[Span]:
    if "::" not in text and text.count(":") < 7:
        return
    for m in _IPV6.finditer(text):
        try:
            address = ipaddress.IPv6Address(m.group())
        except ValueError:
            continue
        if not address.is_unspecified:
            yield m.span()


# --- dates of birth -----------------------------------------------------------------------

_MONTHS = {
    name: i + 1
    for i, names in enumerate(
        ("jan january", "feb february", "mar march", "apr april", "may", "jun june",
         "jul july", "aug august", "sep sept september", "oct october", "nov november",
         "dec december")
    )
    for name in names.split()
}  # fmt: skip
_MONTH = r"(?P<mname>[A-Za-z]{3,9})\.?"
_DATE = re.compile(
    r"(?<![\w/.-])(?:"
    r"(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2})"
    r"|(?P<a>\d{1,2})(?P<sep>[/.-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4})"
    r"|(?P<nd>\d{1,2}) " + _MONTH + r",? (?P<ny>\d{4})"
    r"|(?P<mname2>[A-Za-z]{3,9})\.? (?P<md>\d{1,2}),? (?P<my>\d{4})"
    r")(?![\w/-]|\.\d)"
)
_BIRTH_CONTEXT = re.compile(r"\b(?:born|dob|d\.o\.b|date of birth|birth ?date|birthday)\b", re.I)
EARLIEST_BIRTH = date(1900, 1, 1)


def _as_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _date_candidates(m: re.Match[str]) -> list[date | None]:
    g = m.groupdict()
    if g["iy"]:
        return [_as_date(int(g["iy"]), int(g["im"]), int(g["id"]))]
    if g["y"]:
        a, b, y = int(g["a"]), int(g["b"]), int(g["y"])
        return [_as_date(y, b, a), _as_date(y, a, b)]  # day-first or month-first
    if g["ny"]:
        return [_as_date(int(g["ny"]), _MONTHS.get(g["mname"].lower(), 0), int(g["nd"]))]
    month = _MONTHS.get(g["mname2"].lower(), 0)
    return [_as_date(int(g["my"]), month, int(g["md"]))]


def _might_have_context(text: str) -> bool:
    lower = text.lower()
    return "birth" in lower or "born" in lower or "dob" in lower or "d.o.b" in lower


def plausible_birth(day: date | None, today: date | None = None) -> bool:
    """A birth date: on or after 1900-01-01 and not in the future."""
    return day is not None and EARLIEST_BIRTH <= day <= (today or date.today())


def birth_dates(text: str, *, context: bool = True) -> Iterator[Span]:
    """Dates in a plausible birth range; with ``context``, only after a birth context word."""
    if context and not _might_have_context(text):
        return
    for m in _DATE.finditer(text):
        if not any(plausible_birth(d) for d in _date_candidates(m)):
            continue
        if context and not has_context(_BIRTH_CONTEXT, text, m.start()):
            continue
        yield m.span()


# --- scanning -----------------------------------------------------------------------------

DETECTORS: tuple[tuple[PiiType, float, Callable[[str], Iterator[Span]]], ...] = (
    (PiiType.EMAIL, 0.95, _emails),
    (PiiType.CREDIT_CARD, 0.95, _cards),
    (PiiType.IBAN, 0.95, _ibans),
    (PiiType.US_SSN, 0.85, _ssns),
    (PiiType.IPV4, 0.8, _ipv4s),
    (PiiType.IPV6, 0.8, _ipv6s),
    (PiiType.PHONE, 0.75, _phones),
    (PiiType.DATE_OF_BIRTH, 0.7, birth_dates),
)


def resolve_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep the best of overlapping findings (higher score, then longer), ordered by start."""
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-f.score, f.start - f.end, f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


def scan_text(text: str) -> list[Finding]:
    """Every PII value found in free text, ordered by position, without overlaps."""
    found = [
        Finding(kind, start, end, score)
        for kind, score, detect in DETECTORS
        for start, end in detect(text)
    ]
    return resolve_overlaps(found) if len(found) > 1 else found

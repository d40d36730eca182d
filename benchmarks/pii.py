"""PII detection against Presidio's pattern recognizers, on the same labelled corpus.

Generates a seeded synthetic corpus of short records (support notes, CRM lines, logs) holding
emails, phone numbers (E.164, NANP and UK national forms), US SSNs, Luhn-valid cards of
several issuers, IPv4 addresses and IBANs of several countries, each at a known offset, mixed
with distractor numbers that hold no PII: order and invoice ids, dates, amounts, version
strings, build numbers, timestamps, plain 10-digit account references, 9-digit routing
numbers, ZIP+4 codes and part numbers grouped 3-2-4 like an SSN. Nothing is
downloaded.

Both sides scan every record in the same run: ours with ``scan_text``, Presidio with its
predefined pattern recognizers called directly (Email, Phone, UsSsn, CreditCard, Ip, Iban)
with ``nlp_artifacts=None``, so no spaCy model is loaded and no context enhancement applies.
Presidio's email recognizer validates domains with tldextract; it is given the suffix list
bundled with tldextract so nothing is fetched. A prediction is a true positive when it
overlaps a labelled value of the same type; a label is recalled when such a prediction
exists. IPv4 and IPv6 findings both count as ``ip`` (the corpus holds IPv4 only).

Target (issue 11): >= 50x Presidio's records/s, precision and recall per type at least
Presidio's.

    python benchmarks/pii.py                  # 20,000 records
    python benchmarks/pii.py --records 2000   # quick mode
"""

from __future__ import annotations

import argparse
import logging
import random
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence

from underlay.data.pii import luhn_ok, scan_text

TYPES = ("email", "phone", "us_ssn", "credit_card", "ip", "iban")
OURS = {"email": "email", "phone": "phone", "us_ssn": "us_ssn", "credit_card": "credit_card",
        "ipv4": "ip", "ipv6": "ip", "iban": "iban"}  # fmt: skip
PRESIDIO = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "US_SSN": "us_ssn",
            "CREDIT_CARD": "credit_card", "IP_ADDRESS": "ip", "IBAN_CODE": "iban"}  # fmt: skip

Label = tuple[str, int, int]
Record = tuple[str, list[Label]]
Scanner = Callable[[str], list[Label]]

FIRST = ["alice", "bob", "carla", "dmitri", "eva", "farid", "grace", "hiro", "ines", "jonas"]
LAST = ["smith", "nguyen", "mueller", "garcia", "okafor", "rossi", "tanaka", "dubois", "kowalski"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk", "example.de"]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}",
                        f"{first}_{last}+news"])  # fmt: skip
    return f"{local}@{rng.choice(DOMAINS)}"


def _nanp(rng: random.Random) -> tuple[str, str, str]:
    area = f"{rng.randint(2, 9)}{rng.randint(0, 8)}{rng.randint(0, 9)}"
    while area[1:] == "11":
        area = f"{rng.randint(2, 9)}{rng.randint(0, 8)}{rng.randint(0, 9)}"
    return area, f"{rng.randint(2, 9)}{_digits(rng, 2)}", _digits(rng, 4)


def phone(rng: random.Random) -> str:
    a, e, s = _nanp(rng)
    forms = [
        f"+1 {a} {e} {s}", f"+1{a}{e}{s}", f"({a}) {e}-{s}", f"{a}-{e}-{s}", f"{a}.{e}.{s}",
        f"+44 20 {rng.randint(7000, 8999)} {_digits(rng, 4)}", f"+49 30 {_digits(rng, 8)}",
        f"020 {rng.randint(7000, 8999)} {_digits(rng, 4)}",
        f"07{rng.randint(400, 999)} {_digits(rng, 6)}",
    ]  # fmt: skip
    return rng.choice(forms)


def ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return next(body + d for d in string.digits if luhn_ok(body + d))


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("5" + str(rng.randint(1, 5)), 16), ("37", 15),
                                 ("6011", 16), ("2221", 16), ("34", 15)])  # fmt: skip
    number = _luhn_complete(prefix, length, rng)
    if length == 15:
        return rng.choice([number, f"{number[:4]} {number[4:10]} {number[10:]}"])
    sep = rng.choice(["", " ", "-"])
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1 if i == 0 else 0, 254)) for i in range(4))


IBAN_BBAN = {"DE": "8n10n", "GB": "4a6n8n", "FR": "5n5n11c2n", "NL": "4a10n", "ES": "4n4n2n10n",
             "IT": "1a5n5n12c", "CH": "5n12c", "BE": "3n7n2n"}  # fmt: skip


def _bban(spec: str, rng: random.Random) -> str:
    out = []
    for count, kind in ((int(p[:-1]), p[-1]) for p in _split_spec(spec)):
        alphabet = {"n": string.digits, "a": string.ascii_uppercase}.get(
            kind, string.digits + string.ascii_uppercase
        )
        out.append("".join(rng.choice(alphabet) for _ in range(count)))
    return "".join(out)


def _split_spec(spec: str) -> list[str]:
    parts, current = [], ""
    for ch in spec:
        current += ch
        if ch.isalpha():
            parts.append(current)
            current = ""
    return parts


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_BBAN))
    bban = _bban(IBAN_BBAN[country], rng)
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


DISTRACTORS: Sequence[Callable[[random.Random], str]] = (
    lambda r: f"order ORD-{_digits(r, 8)}",
    lambda r: f"invoice INV-{r.randint(2019, 2025)}-{_digits(r, 6)}",
    lambda r: f"on {r.randint(2019, 2025)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    lambda r: f"due {r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(2019, 2025)}",
    lambda r: f"total ${r.randint(1, 99)},{_digits(r, 3)}.{_digits(r, 2)}",
    lambda r: f"amount EUR {r.randint(100, 99999)}.{_digits(r, 2)}",
    lambda r: f"version {r.randint(1, 20)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
    lambda r: f"build {r.randint(10, 12)}.0.{_digits(r, 5)}.{_digits(r, 4)}",
    lambda r: f"ref #{_digits(r, 10)}",
    lambda r: f"ts {r.randint(1_600_000_000, 1_800_000_000)}",
    lambda r: f"tracking {_digits(r, 12)}",
    lambda r: f"at {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
    lambda r: f"sku {_digits(r, 3)}-{_digits(r, 3)}-{_digits(r, 3)}",
    lambda r: f"qty {r.randint(1, 500)} x {_digits(r, 4)} {_digits(r, 4)}",
    lambda r: f"routing {_digits(r, 9)}",
    lambda r: f"zip {r.randint(10000, 99999)}-{_digits(r, 4)}",
    lambda r: f"part {_digits(r, 3)} {_digits(r, 2)} {_digits(r, 4)}",
)
ENTITIES: dict[str, tuple[Callable[[random.Random], str], Sequence[str]]] = {
    "email": (email, ["email", "write to", "contact", "reply-to"]),
    "phone": (phone, ["call", "phone", "mobile", "tel"]),
    "us_ssn": (ssn, ["ssn", "social security no.", "SSN:"]),
    "credit_card": (card, ["card", "paid with", "cc"]),
    "ip": (ipv4, ["from ip", "client", "login from"]),
    "iban": (iban, ["iban", "refund to", "account"]),
}


def record(rng: random.Random) -> Record:
    """One labelled record: 1-3 entities and 1-3 distractors in random order."""
    units: list[list[tuple[str | None, str]]] = []
    for kind in rng.sample(sorted(ENTITIES), rng.randint(1, 3)):
        make, cues = ENTITIES[kind]
        units.append([(None, rng.choice(cues)), (kind, make(rng))])
    units += [[(None, rng.choice(DISTRACTORS)(rng))] for _ in range(rng.randint(1, 3))]
    rng.shuffle(units)
    parts = [part for unit in units for part in unit]
    text, labels = "Customer", []
    for kind, piece in parts:
        text += rng.choice([" ", ", ", "; "]) if kind is None else " "
        if kind is not None:
            labels.append((kind, len(text), len(text) + len(piece)))
        text += piece
    return text + ".", labels


def corpus(records: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return [record(rng) for _ in range(records)]


def ours(text: str) -> list[Label]:
    return [(OURS[f.type.value], f.start, f.end) for f in scan_text(text) if f.type.value in OURS]


def presidio_scanner() -> Scanner:
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=())  # bundled list, no download
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    recognizers = [EmailRecognizer(), PhoneRecognizer(), UsSsnRecognizer(),
                   CreditCardRecognizer(), IpRecognizer(), IbanRecognizer()]  # fmt: skip

    def scan(text: str) -> list[Label]:
        return [
            (PRESIDIO[r.entity_type], r.start, r.end)
            for recognizer in recognizers
            for r in recognizer.analyze(text, recognizer.supported_entities, None)
            if r.entity_type in PRESIDIO
        ]

    return scan


def evaluate(
    records: list[Record], scanners: dict[str, Scanner], block: int = 100
) -> dict[str, tuple[float, dict[str, tuple[float, float]]]]:
    """Per scanner: records per second, and (precision, recall) per type.

    The scanners take turns block by block, so a change in the machine's load during the run
    weighs on both alike and the ratio stays fair on a shared machine.
    """
    elapsed = dict.fromkeys(scanners, 0.0)
    predictions: dict[str, list[list[Label]]] = {name: [] for name in scanners}
    for i in range(0, len(records), block):
        texts = [text for text, _ in records[i : i + block]]
        for name, scan in scanners.items():
            started = time.perf_counter()
            predictions[name].extend(scan(text) for text in texts)
            elapsed[name] += time.perf_counter() - started
    return {
        name: (len(records) / elapsed[name], score(records, predictions[name])) for name in scanners
    }


def score(records: list[Record], predictions: list[list[Label]]) -> dict[str, tuple[float, float]]:
    """(precision, recall) per type; a hit is an overlapping span of the same type."""
    tp, predicted, found, labelled = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    for (_, labels), preds in zip(records, predictions, strict=True):
        for kind, start, end in preds:
            predicted[kind] += 1
            tp[kind] += any(k == kind and start < e and s < end for k, s, e in labels)
        for kind, start, end in labels:
            labelled[kind] += 1
            found[kind] += any(k == kind and start < e and s < end for k, s, e in preds)
    return {
        t: (tp[t] / predicted[t] if predicted[t] else 0.0, found[t] / labelled[t]) for t in TYPES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    records = corpus(args.records, args.seed)
    labels = Counter(kind for _, ls in records for kind, _, _ in ls)
    print(
        f"corpus: {len(records)} records, seed {args.seed}, labels {dict(sorted(labels.items()))}"
    )
    results = evaluate(records, {"ours": ours, "presidio": presidio_scanner()})
    (ours_rate, ours_scores), (presidio_rate, presidio_scores) = (
        results["ours"],
        results["presidio"],
    )
    print(f"ours: {ours_rate:,.0f} records/s")
    print(f"presidio: {presidio_rate:,.0f} records/s")
    print(f"ratio: {ours_rate / presidio_rate:.1f}x (target >= 50x)")
    print(f"{'type':<12} {'ours P':>7} {'ours R':>7} {'presidio P':>11} {'presidio R':>11}")
    for t in TYPES:
        (op, orr), (pp, pr) = ours_scores[t], presidio_scores[t]
        print(f"{t:<12} {op:>7.3f} {orr:>7.3f} {pp:>11.3f} {pr:>11.3f}")


if __name__ == "__main__":
    main()

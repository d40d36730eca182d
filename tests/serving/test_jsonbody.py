"""Prediction bodies parse as ``json.loads`` parses them: the same values, the same errors."""

from __future__ import annotations

import json
import math
import re

import pytest

from underlay.serving.jsonbody import parse_json

SAME = [
    b'{"records": [[0.1, 2, -3e5, true, null, "x"]]}',
    b'{"a": 1, "a": 2}',  # the last key wins
    b"[1e400, -1e400]",  # out of range: infinities
    b'"\\ud800"',  # a lone surrogate
    b"123456789012345678901234567890",  # beyond 64 bits
    '{"x": [1, 2]}'.encode("utf-16"),  # another encoding, with its BOM
]


@pytest.mark.parametrize("raw", SAME)
def test_the_values_are_those_of_json_loads(raw: bytes) -> None:
    assert parse_json(raw) == json.loads(raw)


def test_nan_and_infinity_literals_are_accepted_as_json_loads_accepts_them() -> None:
    found = parse_json(b"[NaN, Infinity, -Infinity]")
    assert math.isnan(found[0]) and found[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2", b"\xff\xfe\xfd", b""])
def test_refusals_carry_the_messages_of_json_loads(raw: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(raw)
    with pytest.raises(type(expected.value), match="^" + re.escape(str(expected.value)) + "$"):
        parse_json(raw)

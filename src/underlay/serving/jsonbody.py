"""Request bodies parsed as ``json.loads`` would, faster.

pydantic-core's Rust parser (already a dependency) reads a prediction body 5 to 20 times
faster than ``json.loads`` (``docs/serving-performance.md``: a 1-row body 20.7 us -> 1.0 us,
100 rows 900 -> 108 us; orjson measured 4.3 and 116 us, so it brings nothing more). What it
refuses is parsed again by ``json.loads``: refusals carry the standard library's messages,
and whatever the standard parser accepts (lone surrogates, UTF-16 and UTF-32 bodies) is
still accepted.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import from_json


def parse_json(raw: bytes) -> Any:
    """``raw`` as ``json.loads(raw)`` returns it (the same values, the same errors)."""
    try:
        return from_json(raw)
    except ValueError:
        return json.loads(raw)

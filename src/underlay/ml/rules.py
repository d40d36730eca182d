"""The rules a run's logged values obey, checked by the SDK when a value is logged (so a bad
value raises at once, in the training loop, not later in the flush thread) and again by the
server (so no client can store one). Documented in docs/ml.md.

* **Keys** (params, tags, metrics): 1 to 250 characters of letters, digits and ``_ - . /``
  (``system/cpu_percent``), starting with a letter, digit or ``_``.
* **Metric values** are finite numbers: NaN and +/-inf are refused.
* **Steps** are integers from 0 to 2**62; within a run and key each step is greater than the
  last one logged (a step going backwards, or repeated, is refused: 409).
* **Params** are set once: setting a param again to the same value does nothing, to another
  value is refused (409) with both values.
* A run holds at most :data:`MAX_METRIC_KEYS` distinct metric keys and
  :data:`MAX_PARAMS` params and tags each.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from underlay.errors import Conflict, InvalidInput

KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,249}")
MAX_METRIC_KEYS = 1000
MAX_PARAMS = 1000
MAX_VALUE_LEN = 6000
MAX_STEP = 2**62


def check_key(key: object, what: str = "metric") -> str:
    if not isinstance(key, str) or KEY_RE.fullmatch(key) is None:
        shown = repr(key)[:80]
        raise InvalidInput(
            f"{what} key {shown} is not allowed: use 1-250 letters, digits and _ - . / "
            "(starting with a letter, digit or _)",
            key=str(key)[:250],
        )
    return key


def check_text_value(key: str, value: object, what: str = "param") -> str:
    if not isinstance(value, str):
        value = str(value)
    if len(value) > MAX_VALUE_LEN or "\x00" in value:
        raise InvalidInput(
            f"{what} {key!r}: value must be at most {MAX_VALUE_LEN} characters without NUL"
        )
    return value


def check_value(key: str, value: object) -> float:
    """``value`` as a float if it is a finite number (bools refused: say 0 or 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # type: ignore[arg-type]  # numpy scalars, 0-d tensors
        except (TypeError, ValueError):
            raise InvalidInput(f"metric {key!r}: value {value!r:.40} is not a number") from None
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(
            f"metric {key!r}: value {number} is not finite (NaN and infinities are refused)",
            key=key,
        )
    return number


def check_step(key: str, step: object, last: int | None) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise InvalidInput(f"metric {key!r}: step {step!r:.40} is not an integer 0..2**62")
    if last is not None and step <= last:
        raise Conflict(
            f"metric {key!r}: step {step} does not follow the last step logged ({last}); "
            "steps of a key must increase",
            key=key,
            step=step,
            last_step=last,
        )
    return step


def check_key_count(existing: int, new_keys: Iterable[str]) -> None:
    added = len(set(new_keys))
    if existing + added > MAX_METRIC_KEYS:
        raise InvalidInput(
            f"a run holds at most {MAX_METRIC_KEYS} distinct metric keys (it has {existing}, "
            f"this adds {added}): log fewer keys, or put the detail in an artifact",
            limit=MAX_METRIC_KEYS,
        )

"""The window of a drift check: the last N rows or a time span, checked before anything is
read."""

from __future__ import annotations

import pytest

from underlay.errors import InvalidInput
from underlay.monitoring.checks import DEFAULT_ROWS, Window, age


def test_no_window_is_the_last_5000_rows() -> None:
    assert Window().count == DEFAULT_ROWS == 5000
    assert Window().to_dict(now=0.0) == {"rows": 5000}
    assert Window(rows=10).span(now=100.0) == (None, None)


def test_a_time_span_reads_by_time() -> None:
    assert Window(last="15m").count is None
    assert Window(last="15m").span(now=10_000.0) == (10_000.0 - 900, None)
    window = Window(since=0.0, until=60.0)
    assert window.span(now=1e9) == (0.0, 60.0)
    assert window.to_dict(now=1e9) == {
        "since": "1970-01-01T00:00:00+00:00",
        "until": "1970-01-01T00:01:00+00:00",
    }
    assert [age(a) for a in ("90s", "2h", "1d", "1w")] == [90, 7200, 86400, 604800]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 10, "last": "1h"}, "not both"),
        ({"rows": 10, "since": 1.0}, "not both"),
        ({"last": "1h", "until": 5.0}, "not both"),
        ({"rows": 0}, "between 1 and"),
        ({"since": 5.0, "until": 5.0}, "before 'until'"),
        ({"since": float("nan")}, "must be a time"),
        ({"last": "0h"}, "not an age"),
        ({"last": "yesterday"}, "not an age"),
    ],
)
def test_bad_windows_are_invalid_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Window(**kwargs)  # type: ignore[arg-type]

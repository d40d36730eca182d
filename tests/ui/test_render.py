"""The template filters and pagination links, as pages show them."""

from __future__ import annotations

import datetime as dt

import pytest
from starlette.datastructures import URL

from underlay.ui.pagination import href_for, page_links
from underlay.ui.render import duration, number, when


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "—"), (1234, "1,234"), (1234.5678, "1,234.57"), (0.0, "0.00"), (0.0012, "0.0012")],
)
def test_numbers_keep_small_amounts_visible(value: float | None, shown: str) -> None:
    assert number(value) == shown


def test_times_and_durations() -> None:
    moment = dt.datetime(2026, 12, 7, 6, 5, 4, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert when(moment) == "2026-12-07 04:05:04"
    assert when(None) == "—"
    assert duration(3725) == "1h 02m"
    assert duration(65) == "1m 05s"


def test_page_links_keep_the_filters_and_skip_the_middle() -> None:
    url = URL("http://x/jobs?state=queued&page=7&name=a%26b")
    assert href_for(url, 1) == "/jobs?state=queued&name=a%26b"
    labels = [link.label for link in page_links(url, 7, 20)]
    assert labels == ["Previous", "1", "…", "5", "6", "7", "8", "9", "…", "20", "Next"]
    first = page_links(url, 1, 1)
    assert [(link.label, link.href) for link in first if link.label in ("Previous", "Next")] == [
        ("Previous", None),
        ("Next", None),
    ]

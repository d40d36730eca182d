"""The template filters and pagination links, as pages show them."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from starlette.datastructures import URL

from underlay.ui.pagination import href_for, page_links
from underlay.ui.render import duration, number, when, with_unit


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "—"), (1234, "1,234"), (1234.5678, "1,234.57"), (0.0, "0.00"), (0.0012, "0.0012")],
)
def test_numbers_keep_small_amounts_visible(value: float | None, shown: str) -> None:
    assert number(value) == shown


def test_no_value_shows_no_unit() -> None:
    assert with_unit(None, "W") == "—"
    assert with_unit(312.4, "W") == "312 W"


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


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_colours_have_at_least_4_5_to_1_contrast_in_both_themes() -> None:
    css = (Path(__file__).resolve().parents[2] / "src/underlay/ui/static/ui.css").read_text()
    themes = {
        name: dict(re.findall(r"--([a-z-]+): light-dark\(" + pattern, css))
        for name, pattern in (
            ("light", r"(#[0-9a-f]{6}), #"),
            ("dark", r"#[0-9a-f]{6}, (#[0-9a-f]{6})"),
        )
    }
    assert len(themes["light"]) == len(themes["dark"]) >= 10
    for name, colours in themes.items():
        for fg in ("text", "muted", "link", "ok", "warn", "bad"):
            for bg in ("bg", "surface"):
                ratio = contrast(colours[fg], colours[bg])
                assert ratio >= 4.5, f"{name}: {fg} on {bg} is {ratio:.2f}:1"
        assert contrast(colours["accent-text"], colours["accent"]) >= 4.5, name

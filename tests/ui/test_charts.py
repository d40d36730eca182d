"""ui/charts.py: well-formed, accessible, escaped SVG with bounded size."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from markupsafe import Markup

from underlay.ui import charts
from underlay.ui.charts import MAX_POINTS, PALETTE, bar_chart, line_chart, sparkline

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>"


def _parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    return ET.fromstring(str(svg))


def _accessible(root: ET.Element) -> tuple[str, str]:
    """The root is role=img and labelled by its own <title> and <desc>; returns their text."""
    assert root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and desc is not None
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    return title.text or "", desc.text or ""


def _polyline_points(el: ET.Element) -> list[tuple[float, float]]:
    return [
        (float(x), float(y)) for x, y in (p.split(",") for p in (el.get("points") or "").split())
    ]


def test_line_chart_is_well_formed_and_describes_its_data() -> None:
    svg = line_chart(
        {"loss": [(0, 2.0), (1, 1.0), (2, 0.5)], "acc": [(0, 0.1), (2, 0.9)]},
        title="training",
        x_label="step",
        y_label="value",
    )
    root = _parse(svg)
    title, desc = _accessible(root)
    assert title == "training"
    assert "loss: 3 points" in desc and "last 0.5" in desc
    lines = root.findall(f"{SVG}polyline")
    assert [ln.find(f"{SVG}title").text for ln in lines] == ["loss", "acc"]  # type: ignore[union-attr]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "training"  # the visible title
    assert "step" in texts and "value" in texts and "loss" in texts  # axis labels and legend


def test_higher_values_are_drawn_higher() -> None:
    root = _parse(line_chart({"s": [(0, 0), (1, 10), (2, 5)]}, title="t", x_label="x", y_label="y"))
    (line,) = root.findall(f"{SVG}polyline")
    (xa, ya), (xb, yb), (xc, yc) = _polyline_points(line)
    assert xa < xb < xc
    assert yb < yc < ya  # SVG y grows downwards


def test_every_text_is_escaped() -> None:
    outputs = [
        line_chart({EVIL: [(0, 1), (1, 2)], "b": [(0, 2)]}, title=EVIL, x_label=EVIL, y_label=EVIL),
        bar_chart([(EVIL, 3.0)], title=EVIL, unit=EVIL),
        sparkline([1, 2, 3], label=EVIL),
        line_chart({}, title=EVIL, x_label="x", y_label="y"),
    ]
    for svg in outputs:
        assert "<script" not in str(svg)
        assert "&lt;script&gt;" in str(svg)
        _parse(svg)


@pytest.mark.parametrize(
    "svg",
    [
        line_chart({}, title="empty", x_label="x", y_label="y"),
        line_chart({"a": [], "b": [(float("nan"), 1.0)]}, title="empty", x_label="x", y_label="y"),
        bar_chart([], title="empty", unit="h"),
        bar_chart([("a", float("inf"))], title="empty", unit="h"),
        sparkline([]),
    ],
)
def test_empty_data_says_no_data_yet(svg: Markup) -> None:
    root = _parse(svg)
    title, _ = _accessible(root)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[-1] == "no data yet" and texts[:-1] in ([], [title])  # sparklines: no heading
    assert root.find(f"{SVG}polyline") is None


def test_long_series_are_thinned_but_keep_their_spikes() -> None:
    points = [(float(i), 1.0) for i in range(20_000)]
    points[12_345] = (12_345.0, 100.0)
    root = _parse(line_chart({"s": points}, title="t", x_label="x", y_label="y"))
    (line,) = root.findall(f"{SVG}polyline")
    drawn = _polyline_points(line)
    assert len(drawn) <= MAX_POINTS
    assert min(y for _, y in drawn) < max(y for _, y in drawn) - 100  # the spike is still there
    assert len(str(line_chart({"s": points}, title="t", x_label="x", y_label="y"))) < 40_000


def test_flat_single_and_unsorted_series_draw_without_error() -> None:
    flat = _parse(line_chart({"s": [(0, 3), (1, 3)]}, title="t", x_label="x", y_label="y"))
    assert len(_polyline_points(flat.findall(f"{SVG}polyline")[0])) == 2
    single = _parse(line_chart({"s": [(5, 5)]}, title="t", x_label="x", y_label="y"))
    assert single.find(f"{SVG}circle") is not None
    shuffled = _parse(
        line_chart({"s": [(2, 0), (0, 0), (1, 1)]}, title="t", x_label="", y_label="")
    )
    xs = [x for x, _ in _polyline_points(shuffled.findall(f"{SVG}polyline")[0])]
    assert xs == sorted(xs)


def test_each_chart_has_its_own_ids() -> None:
    a = _parse(sparkline([1, 2]))
    b = _parse(sparkline([1, 2]))
    assert a.get("aria-labelledby") != b.get("aria-labelledby")


def test_time_axis_labels_read_as_clock_times() -> None:
    start = 1_700_000_000.0
    root = _parse(
        line_chart(
            {"util": [(start + 60 * i, float(i)) for i in range(60)]},
            title="t",
            x_label="time (UTC)",
            y_label="%",
            x_time=True,
        )
    )
    labels = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert sum(bool(re.fullmatch(r"\d\d:\d\d", lab)) for lab in labels) >= 3


def test_bar_chart_handles_negatives_and_grows_with_bars() -> None:
    svg = bar_chart([("spend", 12.5), ("refund", -3.0)], title="cost", unit="USD")
    root = _parse(svg)
    _, desc = _accessible(root)
    assert desc == "spend: 12.5 USD; refund: -3 USD"
    rects = root.findall(f"{SVG}rect")
    assert len(rects) == 2
    pos, neg = rects
    assert float(neg.get("x", 0)) < float(pos.get("x", 0))  # the negative bar lies left of zero
    small = _parse(bar_chart([("a", 1)], title="t", unit=""))
    big = _parse(bar_chart([(str(i), i) for i in range(10)], title="t", unit=""))
    assert float(big.get("height", 0)) > float(small.get("height", 0))


def test_sparkline_title_gives_the_last_value() -> None:
    title, desc = _accessible(_parse(sparkline([1, 5, 2], label="queue")))
    assert title == "queue: last 2"
    assert desc == "3 values from 1 to 5, last 2"


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("colour", PALETTE)
def test_fallback_colours_read_on_light_and_dark_backgrounds(colour: str) -> None:
    assert _contrast(colour, "#ffffff") >= 3.0
    assert _contrast(colour, "#111827") >= 3.0


def test_stylesheet_colours_every_series_class_from_css_variables() -> None:
    css = (Path(charts.__file__).parent / "static" / "charts.css").read_text()
    for k in range(len(PALETTE)):
        assert f".ul-line.ul-s{k} {{ stroke: var(--chart-{k + 1}); }}" in css


def test_lineage_graph_draws_each_object_once_with_arrows_and_links() -> None:
    from underlay.ui.charts import lineage_graph

    svg = lineage_graph(
        [("model_version:m@1", 0), ("run:7", -1), ("table_version:t@2", -2), (EVIL, 1)],
        [
            ("table_version:t@2", "input_of", "run:7"),
            ("run:7", "produced", "model_version:m@1"),
            ("model_version:m@1", "deployed_as", EVIL),
            ("run:7", "produced", "not-a-node"),  # dropped: an end is not drawn
        ],
        title="lineage",
        root="model_version:m@1",
        links={"run:7": "/runs/p/7?a=1&b=2"},
    )
    assert "<script" not in str(svg)
    root = _parse(svg)
    _, desc = _accessible(root)
    assert "table_version:t@2 input_of run:7" in desc and "not-a-node" not in desc
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "ul-edge"]
    assert len(edges) == 3 and all(e.get("marker-end", "").startswith("url(#") for e in edges)
    groups = root.findall(f".//{SVG}g")
    assert len(groups) == 4
    focus = [g for g in groups if "ul-focus" in (g.get("class") or "")]
    assert [g.find(f"{SVG}title").text for g in focus] == ["model_version:m@1"]  # type: ignore[union-attr]
    (link,) = root.findall(f"{SVG}a")
    assert link.get("href") == "/runs/p/7?a=1&b=2"
    # upstream objects stand left of the root, downstream ones right of it
    xs = {g.find(f"{SVG}title").text: float(g.find(f"{SVG}rect").get("x", 0)) for g in groups}  # type: ignore[union-attr]
    assert xs["table_version:t@2"] < xs["run:7"] < xs["model_version:m@1"] < xs[EVIL]


def test_lineage_graph_without_nodes_says_no_data_yet() -> None:
    from underlay.ui.charts import lineage_graph

    root = _parse(lineage_graph([], [], title="lineage", root="x"))
    assert [t.text for t in root.iter(f"{SVG}text")] == ["lineage", "no data yet"]


def test_grouped_bars_draw_one_bar_per_series_in_each_group() -> None:
    from underlay.ui.charts import grouped_bars

    svg = grouped_bars(
        ["low", EVIL, "high"],
        {"reference": [30.0, 40.0, 30.0], "current": [10.0, 20.0]},  # current lacks a bin
        title="x1",
        unit="%",
    )
    assert "<script" not in str(svg)
    root = _parse(svg)
    _, desc = _accessible(root)
    assert desc.startswith("low: reference 30, current 10;")
    rects = root.findall(f"{SVG}rect")
    assert len(rects) == 5
    assert [r.get("class") for r in rects[:2]] == ["ul-bar ul-s0", "ul-bar ul-s1"]
    widths = [float(r.get("width", 0)) for r in rects]
    assert widths[1] < widths[0] and widths[3] < widths[2]  # current below reference
    legend = root.find(f"{SVG}g")
    assert legend is not None and [t.text for t in legend.iter(f"{SVG}text")] == [
        "reference",
        "current",
    ]
    empty = _parse(grouped_bars([], {}, title="x", unit=""))
    assert [t.text for t in empty.iter(f"{SVG}text")] == ["x", "no data yet"]

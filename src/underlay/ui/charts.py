"""Server-side SVG charts for the dashboard: no JavaScript, no CDN, nothing fetched.

Every chart is a self-contained ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that
summarises the data for screen readers, returned as ``markupsafe.Markup`` so Jinja2 inserts it
unescaped; every piece of text inside (titles, labels, series names) is escaped here.

Colours: text, axes and grid use ``currentColor`` so they follow the page's theme. Series carry
a class (``ul-s0`` .. ``ul-s7``) that ``static/charts.css`` colours from CSS variables per
theme, and a fallback colour attribute (the class rule wins over it) chosen to read on both a
light and a dark background, so a chart stays legible even without the stylesheet. Series also
differ by dash pattern, so colour is never the only cue.

Sizes are bounded: a series is thinned to at most ``MAX_POINTS`` points (min and max of each
bucket kept, so spikes survive), whatever the caller passes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup

__all__ = [
    "MAX_POINTS",
    "PALETTE",
    "bar_chart",
    "grouped_bars",
    "line_chart",
    "lineage_graph",
    "sparkline",
]

MAX_POINTS = 400
# Fallback colours: each has contrast >= 3:1 against both white and a near-black background.
PALETTE = ("#2563eb", "#dc2626", "#15803d", "#b45309", "#7c3aed", "#0e7490", "#db2777", "#4d7c0f")
_DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4", "12 2 2 2")
_ids = itertools.count(1)

Point = tuple[float, float]
Attr = str | float | int


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 240,
    x_time: bool = False,
) -> Markup:
    """A line chart of named series of (x, y) points; ``x_time`` reads x as Unix seconds (UTC)."""
    clean = {str(name): _thin(_finite(points)) for name, points in series.items()}
    clean = {name: pts for name, pts in clean.items() if pts}
    cid = f"ulc{next(_ids)}"
    if not clean:
        return _empty(cid, title, width, height)
    left, right, top = 56, 12, 46 if len(clean) > 1 else 30
    bottom = 44
    pw, ph = max(width - left - right, 10), max(height - top - bottom, 10)
    xs = [p[0] for pts in clean.values() for p in pts]
    ys = [p[1] for pts in clean.values() for p in pts]
    x_ticks = _time_ticks(min(xs), max(xs)) if x_time else _nice_ticks(min(xs), max(xs))
    y_ticks = _nice_ticks(min(ys), max(ys))
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    parts = [_heading(title), _axes(left, top, pw, ph)]
    for t in y_ticks:
        y = sy(t)
        parts.append(_gridline(left, y, left + pw, y))
        parts.append(_text(left - 6, y + 4, _fmt(t), anchor="end"))
    for t in x_ticks:
        x = sx(t)
        parts.append(_gridline(x, top, x, top + ph))
        label = _fmt_time(t, x_ticks[-1] - x_ticks[0]) if x_time else _fmt(t)
        parts.append(_text(x, top + ph + 16, label, anchor="middle"))
    parts.append(_text(left + pw / 2, height - 6, x_label, anchor="middle", cls="ul-axis-label"))
    parts.append(_text(14, top + ph / 2, y_label, anchor="middle", rotate=True))
    for i, (name, pts) in enumerate(clean.items()):
        parts.append(_polyline(i, name, [(sx(x), sy(y)) for x, y in pts]))
    if len(clean) > 1:
        parts.append(_legend(list(clean), left, 34))
    return _svg(cid, title, _describe_series(clean, x_time), width, height, parts)


def bar_chart(
    bars: list[tuple[str, float]],
    *,
    title: str,
    unit: str,
    width: int = 640,
) -> Markup:
    """Horizontal bars, one per (label, value); the height grows with the number of bars."""
    clean = [(str(label), float(v)) for label, v in bars if math.isfinite(float(v))]
    cid = f"ulc{next(_ids)}"
    if not clean:
        return _empty(cid, title, width, 120)
    row = 26
    left = min(max(len(label) for label, _ in clean) * 7 + 12, width // 3)
    right, top, bottom = 72, 26, 24
    height = top + bottom + row * len(clean)
    pw = max(width - left - right, 10)
    ticks = _nice_ticks(min(0.0, *(v for _, v in clean)), max(0.0, *(v for _, v in clean)))
    v0, v1 = ticks[0], ticks[-1]

    def sx(v: float) -> float:
        return left + (v - v0) / (v1 - v0) * pw

    desc = "; ".join(f"{label}: {_fmt(v)} {unit}".rstrip() for label, v in clean[:50])
    parts = [_heading(title)]
    for t in ticks:
        parts.append(_gridline(sx(t), top, sx(t), height - bottom))
        parts.append(_text(sx(t), height - 8, _fmt(t), anchor="middle"))
    zero = sx(0.0)
    for i, (label, v) in enumerate(clean):
        y = top + i * row
        x, w = (zero, sx(v) - zero) if v >= 0 else (sx(v), zero - sx(v))
        value = f"{_fmt(v)} {unit}".rstrip()
        k = i % len(PALETTE)
        box: dict[str, Attr] = {"x": x, "y": y + 4.0, "width": max(w, 1.0), "height": row - 8}
        tip = _el("title", {}, f"{label}: {value}")
        parts.append(_el("rect", {"class": f"ul-bar ul-s{k}", "fill": PALETTE[k], **box}, tip))
        parts.append(_text(left - 6, y + row / 2 + 4, _clip(label, left // 7), anchor="end"))
        parts.append(_text(max(sx(v), zero) + 4, y + row / 2 + 4, value, anchor="start"))
    return _svg(cid, title, desc, width, height, parts)


def grouped_bars(
    labels: list[str],
    series: dict[str, list[float]],
    *,
    title: str,
    unit: str,
    width: int = 640,
) -> Markup:
    """Horizontal bars grouped by label, one bar per series in each group (a histogram of
    two distributions: ``{"reference": [...], "current": [...]}``), with a legend."""
    names = list(series)[: len(PALETTE)]
    cid = f"ulc{next(_ids)}"
    rows = [
        (label, [float(series[n][i]) if i < len(series[n]) else math.nan for n in names])
        for i, label in enumerate(labels[:60])
    ]
    values = [v for _, vs in rows for v in vs if math.isfinite(v)]
    if not names or not values:
        return _empty(cid, title, width, 120)
    bar, gap = 10, 8
    group = bar * len(names) + gap
    left = min(max(len(label) for label, _ in rows) * 7 + 12, width // 3)
    top, bottom = 46, 24
    height = top + bottom + group * len(rows)
    pw = max(width - left - 72, 10)
    ticks = _nice_ticks(min(0.0, *values), max(0.0, *values))
    v0, v1 = ticks[0], ticks[-1]

    def sx(v: float) -> float:
        return left + (v - v0) / (v1 - v0) * pw

    parts = [_heading(title), _legend(names, left, 34)]
    for t in ticks:
        parts.append(_gridline(sx(t), top, sx(t), height - bottom))
        parts.append(_text(sx(t), height - 8, _fmt(t), anchor="middle"))
    desc = []
    for r, (label, vs) in enumerate(rows):
        y = top + r * group
        parts.append(_text(left - 6, y + group / 2, _clip(label, left // 7), anchor="end"))
        for k, v in enumerate(vs):
            if not math.isfinite(v):
                continue
            x, w = (sx(0.0), sx(v) - sx(0.0)) if v >= 0 else (sx(v), sx(0.0) - sx(v))
            box: dict[str, Attr] = {"x": x, "y": y + k * bar, "width": max(w, 1.0), "height": bar}
            tip = _el("title", {}, f"{label}, {names[k]}: {_fmt(v)} {unit}".rstrip())
            parts.append(_el("rect", {"class": f"ul-bar ul-s{k}", "fill": PALETTE[k], **box}, tip))
        desc.append(
            f"{label}: " + ", ".join(f"{n} {_fmt(v)}" for n, v in zip(names, vs, strict=True))
        )
    return _svg(cid, title, "; ".join(desc[:40]), width, height, parts)


def sparkline(
    values: Sequence[float], *, width: int = 120, height: int = 24, label: str = "trend"
) -> Markup:
    """A small inline trend line with no axes; the title gives the range and the last value."""
    ys = [float(v) for v in values if math.isfinite(float(v))]
    cid = f"ulc{next(_ids)}"
    if not ys:
        return _empty(cid, label, width, height, small=True)
    pts = _thin([(float(i), y) for i, y in enumerate(ys)])
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    n = max(len(ys) - 1, 1)
    coords = [
        (1 + x / n * (width - 2), height - 2 - (y - lo) / span * (height - 4)) for x, y in pts
    ]
    if len(coords) == 1:
        coords = [(1.0, coords[0][1]), (width - 1.0, coords[0][1])]
    desc = f"{len(ys)} values from {_fmt(lo)} to {_fmt(hi)}, last {_fmt(ys[-1])}"
    title = f"{label}: last {_fmt(ys[-1])}"
    line = _el(
        "polyline",
        {
            "class": "ul-line ul-s0",
            "fill": "none",
            "stroke": PALETTE[0],
            "stroke-width": 1.5,
            "points": _points(coords),
        },
    )
    return _svg(cid, title, desc, width, height, [line], cls="ul-chart ul-spark")


MAX_NODES = 60


def lineage_graph(
    nodes: list[tuple[str, int]],
    edges: list[tuple[str, str, str]],
    *,
    title: str,
    root: str,
    links: dict[str, str] | None = None,
) -> Markup:
    """A left-to-right graph: ``nodes`` are (label, distance from the root: negative
    upstream), placed in one column per distance; ``edges`` are (source label, relation,
    target label) drawn as arrows. ``links`` maps a label to the page it opens."""
    cid = f"ulc{next(_ids)}"
    shown = nodes[:MAX_NODES]
    if not shown:
        return _empty(cid, title, 640, 120)
    columns: dict[int, list[str]] = {}
    for label, distance in shown:
        columns.setdefault(distance, []).append(label)
    order = sorted(columns)
    box_w, box_h, gap_x, gap_y, pad = 200, 30, 60, 14, 10
    where: dict[str, tuple[float, float]] = {}
    for col, distance in enumerate(order):
        for row, label in enumerate(columns[distance]):
            where[label] = (pad + col * (box_w + gap_x), pad + row * (box_h + gap_y))
    width = int(pad * 2 + len(order) * box_w + (len(order) - 1) * gap_x)
    height = int(pad * 2 + max(len(v) for v in columns.values()) * (box_h + gap_y) - gap_y)
    arrow = f"{cid}-a"
    marker: dict[str, Attr] = {"id": arrow, "viewBox": "0 0 10 10", "refX": 10, "refY": 5}
    marker.update(markerWidth=8, markerHeight=8, orient="auto-start-reverse")
    tip_path = _el("path", {"d": "M0,0 L10,5 L0,10 z", "fill": "currentColor"})
    parts = [_el("defs", {}, _el("marker", marker, tip_path))]
    drawn = [(a, rel, b) for a, rel, b in edges if a in where and b in where]
    for src, relation, dst in drawn:
        (x1, y1), (x2, y2) = where[src], where[dst]
        path = (
            f"M{x1 + box_w:.1f},{y1 + box_h / 2:.1f} C{x1 + box_w + gap_x / 2:.1f},"
            f"{y1 + box_h / 2:.1f} {x2 - gap_x / 2:.1f},{y2 + box_h / 2:.1f} "
            f"{x2:.1f},{y2 + box_h / 2:.1f}"
        )
        look: dict[str, Attr] = {"class": "ul-edge", "fill": "none", "stroke": "currentColor"}
        tip = _el("title", {}, f"{src} {relation} {dst}")
        parts.append(_el("path", {**look, "d": path, "marker-end": f"url(#{arrow})"}, tip))
    for label, _distance in shown:
        parts.append(_graph_node(label, where[label], box_w, box_h, label == root, links))
    lines = [f"{a} {rel} {b}" for a, rel, b in drawn[:40]]
    more = f" (first {MAX_NODES} of {len(nodes)} shown)" if len(nodes) > MAX_NODES else ""
    desc = f"{len(shown)} objects around {root}{more}: " + "; ".join(lines)
    return _svg(cid, title, desc, width, height, parts, cls="ul-chart ul-graph")


def _graph_node(
    label: str,
    at: tuple[float, float],
    box_w: int,
    box_h: int,
    focus: bool,
    links: dict[str, str] | None,
) -> Markup:
    x, y = at
    frame: dict[str, Attr] = {"x": x, "y": y, "width": box_w, "height": box_h, "rx": 4}
    look: dict[str, Attr] = {"fill": "none", "stroke": PALETTE[0] if focus else "currentColor"}
    if focus:
        look["stroke-width"] = 2.5
    body = Markup("").join(
        [
            _el("rect", {**frame, **look}),
            _text(x + box_w / 2, y + box_h / 2 + 4, _clip(label, 30), anchor="middle"),
            _el("title", {}, label),
        ]
    )
    node = _el("g", {"class": "ul-node ul-focus" if focus else "ul-node"}, body)
    href = (links or {}).get(label)
    return _el("a", {"href": href}, node) if href else node


# --- drawing helpers -------------------------------------------------------------------------


def _el(tag: str, attrs: dict[str, Attr], body: Markup | str | None = None) -> Markup:
    """One element; every attribute value and a plain-string body are escaped."""
    rendered = Markup("").join(
        Markup(' {}="{}"').format(k, f"{v:.1f}" if isinstance(v, float) else v)
        for k, v in attrs.items()
    )
    if body is None:
        return Markup("<{}{}/>").format(tag, rendered)
    return Markup("<{}{}>{}</{}>").format(tag, rendered, body, tag)


def _svg(
    cid: str,
    title: str,
    desc: str,
    width: int,
    height: int,
    parts: list[Markup],
    cls: str = "ul-chart",
) -> Markup:
    attrs: dict[str, Attr] = {
        "xmlns": "http://www.w3.org/2000/svg",
        "class": cls,
        "role": "img",
        "width": width,
        "height": height,
        "viewBox": f"0 0 {width} {height}",
        "aria-labelledby": f"{cid}-t {cid}-d",
        "font-size": 11,
        "fill": "currentColor",
    }
    head = [_el("title", {"id": f"{cid}-t"}, title), _el("desc", {"id": f"{cid}-d"}, desc)]
    return _el("svg", attrs, Markup("").join(head + parts))


def _empty(cid: str, title: str, width: int, height: int, small: bool = False) -> Markup:
    text = "no data yet"
    parts = [_text(width / 2, height / 2 + 4, text, anchor="middle", cls="ul-empty")]
    if not small:
        frame: dict[str, Attr] = {"x": 0.5, "y": 0.5, "width": width - 1, "height": height - 1}
        look: dict[str, Attr] = {"fill": "none", "stroke": "currentColor", "stroke-opacity": "0.25"}
        parts[:0] = [_el("rect", {**frame, **look}), _heading(title)]
    return _svg(cid, title, text, width, height, parts)


def _heading(title: str) -> Markup:
    """The chart's title drawn at its top left (the <title> is for screen readers)."""
    return _el(
        "text",
        {"class": "ul-chart-title", "x": 4, "y": 15, "font-size": 13, "font-weight": 600},
        _clip(title, 90),
    )


def _axes(left: float, top: float, pw: float, ph: float) -> Markup:
    look: dict[str, Attr] = {"fill": "none", "stroke": "currentColor", "stroke-opacity": "0.6"}
    path = f"M{left:.1f},{top:.1f} V{top + ph:.1f} H{left + pw:.1f}"
    return _el("path", {"class": "ul-axis", **look, "d": path})


def _gridline(x1: float, y1: float, x2: float, y2: float) -> Markup:
    look: dict[str, Attr] = {"class": "ul-grid", "stroke": "currentColor", "stroke-opacity": "0.12"}
    return _el("line", {**look, "x1": x1, "y1": y1, "x2": x2, "y2": y2})


def _text(
    x: float, y: float, text: str, *, anchor: str, cls: str = "", rotate: bool = False
) -> Markup:
    attrs: dict[str, Attr] = {"x": x, "y": y, "text-anchor": anchor}
    if cls:
        attrs["class"] = cls
    if rotate:
        attrs["transform"] = f"rotate(-90 {x:.1f} {y:.1f})"
    return _el("text", attrs, text)


def _points(coords: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)


def _stroke(k: int) -> dict[str, Attr]:
    attrs: dict[str, Attr] = {"class": f"ul-line ul-s{k}", "stroke": PALETTE[k], "stroke-width": 2}
    if _DASHES[k]:
        attrs["stroke-dasharray"] = _DASHES[k]
    return attrs


def _polyline(i: int, name: str, coords: list[tuple[float, float]]) -> Markup:
    k = i % len(PALETTE)
    tip = _el("title", {}, name)
    if len(coords) == 1:
        x, y = coords[0]
        dot: dict[str, Attr] = {"class": f"ul-dot ul-s{k}", "fill": PALETTE[k], "r": 3}
        return _el("circle", {**dot, "cx": x, "cy": y}, tip)
    return _el("polyline", {**_stroke(k), "fill": "none", "points": _points(coords)}, tip)


def _legend(names: list[str], x: float, y: float) -> Markup:
    parts = []
    for i, name in enumerate(names[: len(PALETTE) * 2]):
        k = i % len(PALETTE)
        parts.append(_el("line", {**_stroke(k), "x1": x, "y1": y - 4, "x2": x + 18, "y2": y - 4}))
        label = _clip(name, 24)
        parts.append(_text(x + 22, y, label, anchor="start"))
        x += 30 + 6.5 * len(label)
    return _el("g", {"class": "ul-legend"}, Markup("").join(parts))


# --- data helpers ----------------------------------------------------------------------------


def _finite(points: Sequence[tuple[float, float]]) -> list[Point]:
    out: list[Point] = []
    for x, y in points:
        fx, fy = float(x), float(y)
        if math.isfinite(fx) and math.isfinite(fy):
            out.append((fx, fy))
    out.sort(key=lambda p: p[0])
    return out


def _thin(points: list[Point]) -> list[Point]:
    """At most MAX_POINTS points: each bucket keeps its lowest and highest, in x order."""
    if len(points) <= MAX_POINTS:
        return points
    size = math.ceil(len(points) / (MAX_POINTS // 2))
    out: list[Point] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        lo = min(bucket, key=lambda p: p[1])
        hi = max(bucket, key=lambda p: p[1])
        out.extend(sorted({lo, hi}, key=lambda p: p[0]))
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]; a flat range is widened so it has height."""
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [start]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(start + len(ticks) * step)
    return [round(t, 12) for t in ticks]


_TIME_STEPS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)


def _time_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Ticks on whole minutes, hours or days (UTC) covering [lo, hi]."""
    if hi == lo:
        lo, hi = lo - 60, hi + 60
    raw = (hi - lo) / max(count - 1, 1)
    step = next((s for s in _TIME_STEPS if s >= raw), None)
    if step is None:
        step = 86400 * math.ceil(raw / 86400)
    start = math.floor(lo / step) * step
    ticks = [float(start)]
    while ticks[-1] < hi:
        ticks.append(float(start + len(ticks) * step))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    if a >= 0.01:
        return f"{v:.4g}"
    return f"{v:.2e}"


def _fmt_time(t: float, span: float) -> str:
    moment = datetime.fromtimestamp(t, tz=UTC)
    if span >= 2 * 86400:
        return moment.strftime("%m-%d")
    if span >= 600:
        return moment.strftime("%H:%M")
    return moment.strftime("%H:%M:%S")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(n - 1, 1)] + "…"


def _describe_series(series: dict[str, list[Point]], x_time: bool) -> str:
    out = []
    for name, pts in list(series.items())[:20]:
        ys = [p[1] for p in pts]
        first, last = pts[0][0], pts[-1][0]
        span = last - first
        xr = (
            f"{_fmt_time(first, span)} to {_fmt_time(last, span)}"
            if x_time
            else f"{_fmt(first)} to {_fmt(last)}"
        )
        out.append(
            f"{name}: {len(pts)} points, x {xr}, y from {_fmt(min(ys))} to {_fmt(max(ys))},"
            f" last {_fmt(ys[-1])}"
        )
    return "; ".join(out)

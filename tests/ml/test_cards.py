"""Model cards as pure functions: sections a later layer adds, and escaping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from underlay.ml.registry import cards


@pytest.fixture
def restore_sections() -> Iterator[None]:
    saved = list(cards._SECTIONS)
    yield
    cards._SECTIONS[:] = saved


def _ctx(**fields: object) -> cards.CardContext:
    return cards.CardContext(
        project="p", model="churn", version=3, flavor="sklearn", created_at="now", **fields
    )  # type: ignore[arg-type]


def test_a_later_layer_adds_a_section_where_it_says(restore_sections: None) -> None:
    def fairness(ctx: cards.CardContext) -> cards.Section:
        gap = ctx.extra.get("gap", "?")
        return cards.Section("fairness", "Fairness", [cards.Paragraph(f"gap {gap}")])

    cards.register_section("fairness", fairness, after="evaluation_slices")
    cards.register_section("drift", lambda ctx: None, before="intended_use")
    keys = cards.section_keys()
    assert keys.index("fairness") == keys.index("evaluation_slices") + 1
    assert keys[0] == "drift"
    built = cards.build(_ctx(extra={"gap": 0.02}))
    assert [s.key for s in built] == [
        "intended_use",
        "details",
        "training_data",
        "metrics",
        "fairness",
        "limitations",
        "licences",
    ]  # no slices logged, and the drift builder returned None: both left out
    assert "## Fairness\n\ngap 0.02" in cards.to_markdown(_ctx(extra={"gap": 0.02}), built)


def test_user_text_never_becomes_markup() -> None:
    ctx = _ctx(
        intended_use="<img src=x onerror=alert(1)>\nsecond line",
        limitations="a | b",
        metrics={"slice/<b>eu</b>/acc": 0.5},
    )
    sections = cards.build(ctx)
    page = cards.to_html(ctx, sections)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;<br>second line" in page
    assert "<td>&lt;b&gt;eu&lt;/b&gt;</td>" in page
    text = cards.to_markdown(ctx, sections)
    assert "<img" not in text and "a \\| b" in text and "&lt;b&gt;eu&lt;/b&gt;" in text

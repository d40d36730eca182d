"""Model cards: generated from the registry, the run's metrics and lineage, as Markdown or HTML.

A card is a list of sections, each built by one function of a :class:`CardContext`; the
built-in ones are intended use, model details, training data, metrics, evaluation slices,
limitations and licences. Later layers (fairness, robustness, drift) add theirs with
:func:`register_section`, placed before or after a named one. A section is made of blocks
(paragraphs, bullet lists, tables) rendered by this module, so the HTML form escapes every
value it did not write itself: nothing a user typed becomes markup.

Evaluation slices are the run's metrics logged as ``slice/<slice>/<metric>``
(``slice/region.eu/accuracy``); ``system/`` metrics (CPU, memory) are not model metrics and
stay out of the card.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SLICE_PREFIX = "slice/"
SYSTEM_PREFIX = "system/"


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


Block = Paragraph | Bullets | Table


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blocks: list[Block]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "markdown": _md_blocks(self.blocks)}


@dataclass
class CardContext:
    """Everything a section may read."""

    project: str
    model: str
    version: int
    flavor: str
    created_at: str
    description: str = ""
    intended_use: str = ""
    limitations: str = ""
    license: str = ""
    data_license: str = ""
    aliases: list[str] = field(default_factory=list)
    run: int | None = None
    signature: dict[str, Any] = field(default_factory=dict)
    key_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)  # "dataset_version:sales@3"
    extra: dict[str, Any] = field(default_factory=dict)  # for sections of later layers


SectionBuilder = Callable[[CardContext], Section | None]
_SECTIONS: list[tuple[str, SectionBuilder]] = []


def register_section(
    key: str, builder: SectionBuilder, *, before: str | None = None, after: str | None = None
) -> None:
    """Add (or replace) a section; by default it goes last."""
    global _SECTIONS
    _SECTIONS = [(k, b) for k, b in _SECTIONS if k != key]
    anchor = before or after
    keys = [k for k, _ in _SECTIONS]
    if anchor is None or anchor not in keys:
        _SECTIONS.append((key, builder))
        return
    index = keys.index(anchor) + (1 if after else 0)
    _SECTIONS.insert(index, (key, builder))


def section_keys() -> list[str]:
    return [k for k, _ in _SECTIONS]


def build(ctx: CardContext) -> list[Section]:
    return [s for _, builder in _SECTIONS if (s := builder(ctx)) is not None]


def title(ctx: CardContext) -> str:
    return f"Model card: {ctx.model} version {ctx.version}"


def to_markdown(ctx: CardContext, sections: list[Section]) -> str:
    parts = [f"# {_md(title(ctx))}", ""]
    for section in sections:
        parts += [f"## {_md(section.title)}", "", _md_blocks(section.blocks), ""]
    return "\n".join(parts).rstrip() + "\n"


def to_html(ctx: CardContext, sections: list[Section]) -> str:
    e = html.escape
    body = [f"<h1>{e(title(ctx))}</h1>"]
    for section in sections:
        body.append(f'<section id="{e(section.key)}"><h2>{e(section.title)}</h2>')
        body += [_html_block(b) for b in section.blocks]
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title(ctx))}</title></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# -- rendering -------------------------------------------------------------------------------


def _md(text: str) -> str:
    """Text safe inside Markdown: no raw HTML, table pipes escaped, one line."""
    return (
        text.replace("\\", "\\\\")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def _md_paragraph(text: str) -> str:
    return "\n".join(_md(line) for line in text.splitlines()) or "—"


def _md_blocks(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Paragraph):
            out.append(_md_paragraph(block.text))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md(item)}" for item in block.items))
        else:
            lines = [
                "| " + " | ".join(_md(h) for h in block.headers) + " |",
                "| " + " | ".join("---" for _ in block.headers) + " |",
            ]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out)


def _html_block(block: Block) -> str:
    e = html.escape
    if isinstance(block, Paragraph):
        return "<p>" + "<br>".join(e(line) for line in block.text.splitlines()) + "</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>"
    head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _or_unset(text: str, what: str) -> Paragraph:
    return Paragraph(text.strip() or f"Not stated. Set it with `underlay models update --{what}`.")


def _number(value: float) -> str:
    return f"{value:.6g}"


# -- the built-in sections -------------------------------------------------------------------


def _intended_use(ctx: CardContext) -> Section:
    blocks: list[Block] = []
    if ctx.description:
        blocks.append(Paragraph(ctx.description))
    blocks.append(_or_unset(ctx.intended_use, "intended-use"))
    return Section("intended_use", "Intended use", blocks)


def _details(ctx: CardContext) -> Section:
    rows = [
        ["Project", ctx.project],
        ["Model", ctx.model],
        ["Version", str(ctx.version)],
        ["Aliases", ", ".join(ctx.aliases) or "none"],
        ["Flavor", ctx.flavor],
        ["Registered", ctx.created_at],
        ["Run", "none" if ctx.run is None else str(ctx.run)],
        ["Signed by key", ctx.key_id],
    ]
    blocks: list[Block] = [Table(["Field", "Value"], rows)]
    inputs = ctx.signature.get("inputs") or []
    if inputs:
        blocks.append(
            Table(
                ["Input", "Type", "Shape", "Range seen"],
                [
                    [
                        str(t.get("name")),
                        str(t.get("dtype")),
                        str(t.get("shape")),
                        _range(t),
                    ]
                    for t in inputs
                ],
            )
        )
    return Section("details", "Model details", blocks)


def _range(tensor: dict[str, Any]) -> str:
    if tensor.get("min") is not None:
        return f"{_number(tensor['min'])} to {_number(tensor['max'])}"
    if tensor.get("values"):
        return ", ".join(str(v) for v in tensor["values"][:10])
    return ""


def _training_data(ctx: CardContext) -> Section:
    if not ctx.data:
        return Section(
            "training_data",
            "Training data",
            [Paragraph("No dataset or table versions are recorded for this model's run.")],
        )
    return Section("training_data", "Training data", [Bullets(sorted(ctx.data))])


def _metrics(ctx: CardContext) -> Section:
    plain = {
        k: v
        for k, v in ctx.metrics.items()
        if not k.startswith(SLICE_PREFIX) and not k.startswith(SYSTEM_PREFIX)
    }
    blocks: list[Block] = []
    if plain:
        blocks.append(
            Table(["Metric", "Value"], [[k, _number(v)] for k, v in sorted(plain.items())])
        )
    else:
        blocks.append(Paragraph("The run logged no metrics."))
    if ctx.params:
        blocks.append(
            Table(["Parameter", "Value"], [[k, v] for k, v in sorted(ctx.params.items())])
        )
    return Section("metrics", "Metrics", blocks)


def _slices(ctx: CardContext) -> Section | None:
    table: dict[str, dict[str, float]] = {}
    for key, value in ctx.metrics.items():
        if key.startswith(SLICE_PREFIX):
            name, _, metric = key[len(SLICE_PREFIX) :].rpartition("/")
            if name and metric:
                table.setdefault(name, {})[metric] = value
    if not table:
        return None
    metrics = sorted({m for row in table.values() for m in row})
    rows = [
        [name, *(_number(row[m]) if m in row else "" for m in metrics)]
        for name, row in sorted(table.items())
    ]
    return Section("evaluation_slices", "Evaluation slices", [Table(["Slice", *metrics], rows)])


def _limitations(ctx: CardContext) -> Section:
    return Section("limitations", "Limitations", [_or_unset(ctx.limitations, "limitations")])


def _licences(ctx: CardContext) -> Section:
    rows = [
        ["Model", ctx.license or "not stated"],
        ["Training data", ctx.data_license or "not stated"],
    ]
    return Section("licences", "Licences", [Table(["Of", "Licence"], rows)])


for _key, _builder in (
    ("intended_use", _intended_use),
    ("details", _details),
    ("training_data", _training_data),
    ("metrics", _metrics),
    ("evaluation_slices", _slices),
    ("limitations", _limitations),
    ("licences", _licences),
):
    register_section(_key, _builder)

"""Rendering dashboard pages: one Jinja2 environment over ``ui/templates`` (autoescaped).

Every template gets ``caller`` (None on the sign-in page), ``csrf`` and ``csrf_field()``
(the hidden input every form carries), ``request`` and ``nav`` (the menu, with the current
entry marked), besides what the page passes.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from underlay.ui.auth import CSRF_FIELD, UiCaller

TEMPLATES = Path(__file__).parent / "templates"

NAV: tuple[tuple[str, str], ...] = (
    ("Overview", "/"),
    ("Nodes", "/nodes"),
    ("Jobs", "/jobs"),
    ("Runs", "/runs"),
    ("Models", "/models"),
    ("Datasets", "/datasets"),
    ("Deployments", "/deployments"),
    ("Alerts", "/alerts"),
    ("Audit", "/audit"),
    ("Simulate", "/simulate"),
)


def when(value: dt.datetime | None) -> str:
    """A timestamp as people read it (UTC, to the second); '—' for none."""
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if value and abs(value) < 10**-digits:  # a small amount is not zero: 0.0012, not 0.00
        return f"{value:.2g}"
    return f"{value:,.{digits}f}"


def with_unit(value: float | int | None, unit: str, digits: int = 0) -> str:
    """``123 W``; just '—' when there is no value (no unit after nothing)."""
    return "—" if value is None else f"{number(value, digits)} {unit}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["number"] = number
    env.filters["duration"] = duration
    env.filters["with_unit"] = with_unit
    return env


def _current(path: str) -> str:
    """The nav entry a path belongs to (the longest that prefixes it; "/" for the rest)."""
    best = "/"
    for _, href in NAV:
        if href != "/" and (path == href or path.startswith(href + "/")):
            best = href
    return best


def render(
    request: Request,
    template: str,
    caller: UiCaller | None,
    *,
    status_code: int = 200,
    **ctx: Any,
) -> HTMLResponse:
    """The page ``template`` rendered for ``caller``."""
    csrf = caller.csrf if caller else ctx.pop("csrf", "")

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(csrf))

    page = environment().get_template(template)
    html = page.render(
        request=request,
        caller=caller,
        csrf=csrf,
        csrf_field=csrf_field,
        nav=NAV,
        current=_current(request.url.path),
        **ctx,
    )
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
        },
    )


CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

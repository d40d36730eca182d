"""Human units for what the CLI prints in tables: Wh/kWh, GPU-h, money, gCO2e, 1h 02m, MiB.

Only tables use these; ``--json`` keeps the raw machine values (docs/compute.md lists their
units) so scripts are not broken by a change of display.
"""

from __future__ import annotations

import datetime as dt
import math

_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def energy(kwh: float) -> str:
    """Energy from kWh: ``850 Wh`` below one kWh, ``1.25 kWh`` above, ``12.5 MWh`` beyond."""
    if abs(kwh) >= 1000:
        return f"{_num(kwh / 1000)} MWh"
    if abs(kwh) >= 1:
        return f"{_num(kwh)} kWh"
    return f"{_num(kwh * 1000)} Wh"


def gpu_time(hours: float) -> str:
    """GPU time in GPU-hours: ``0.25 GPU-h``."""
    return f"{_num(hours)} GPU-h"


def money(amount: float, currency: str) -> str:
    """An amount with its currency, to the cent: ``12.35 USD``; under a cent, ``<0.01 USD``."""
    if 0 < abs(amount) < 0.005:
        return f"<0.01 {currency}"
    return f"{amount:,.2f} {currency}"


def carbon(kg: float) -> str:
    """Carbon in gCO2e from kg: ``36.8 gCO2e``; a tonne and up in kgCO2e."""
    grams = kg * 1000
    if abs(grams) >= 1_000_000:
        return f"{_num(kg)} kgCO2e"
    return f"{_num(grams)} gCO2e"


def duration(seconds: float) -> str:
    """A duration: ``45s``, ``3m 05s``, ``1h 02m``, ``2d 03h``."""
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def size(n_bytes: int) -> str:
    """A size in binary units: ``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1 GiB``."""
    value = float(n_bytes)
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{n_bytes} B" if unit == "B" else f"{_num(value)} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def timestamp(value: dt.datetime | str | None) -> str:
    """A time shortened to the minute, in UTC: ``2026-12-06 13:05``; None is ``-``."""
    if value is None:
        return "-"
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M")

"""The CLI's human units (src/underlay/cli/units.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from underlay.cli import units


@pytest.mark.parametrize(
    ("kwh", "text"),
    [
        (0, "0 Wh"),
        (0.85, "850 Wh"),
        (3.6849166666666666e-05, "0.0368 Wh"),
        (1.25, "1.25 kWh"),
        (12500, "12.5 MWh"),
    ],
)
def test_energy(kwh: float, text: str) -> None:
    assert units.energy(kwh) == text


def test_gpu_time() -> None:
    assert units.gpu_time(0.25) == "0.25 GPU-h"
    assert units.gpu_time(1 / 3) == "0.333 GPU-h"
    assert units.gpu_time(1234.4) == "1234 GPU-h"
    assert units.gpu_time(2e-06) == "0.000002 GPU-h"


@pytest.mark.parametrize(
    ("amount", "text"),
    [(12.345, "12.35 EUR"), (0, "0.00 EUR"), (0.001, "<0.01 EUR"), (1234.5, "1,234.50 EUR")],
)
def test_money_carries_its_currency(amount: float, text: str) -> None:
    assert units.money(amount, "EUR") == text


@pytest.mark.parametrize(
    ("kg", "text"),
    [(0.0368, "36.8 gCO2e"), (0, "0 gCO2e"), (2.5, "2500 gCO2e"), (1500, "1500 kgCO2e")],
)
def test_carbon_in_grams(kg: float, text: str) -> None:
    assert units.carbon(kg) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.4, "45s"), (185, "3m 05s"), (3720, "1h 02m"), (183600, "2d 03h"), (-3, "0s")],
)
def test_duration(seconds: float, text: str) -> None:
    assert units.duration(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KiB"),
        (3 * 1024**2 + 200_000, "3.19 MiB"),
        (1024**3, "1 GiB"),
    ],
)
def test_size_in_binary_units(n: int, text: str) -> None:
    assert units.size(n) == text


def test_timestamp_to_the_minute_in_utc() -> None:
    cest = dt.timezone(dt.timedelta(hours=2))
    assert (
        units.timestamp(dt.datetime(2026, 12, 6, 15, 5, 59, 123, tzinfo=cest)) == "2026-12-06 13:05"
    )
    assert units.timestamp("2026-12-06T13:05:59.5+00:00") == "2026-12-06 13:05"
    assert units.timestamp(None) == "-"

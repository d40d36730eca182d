"""The ml pages in headless Chromium with seeded data: runs (compare two from the table),
models, datasets with the SQL box, deployments, simulate; a screenshot of each page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import Site, screenshot
from tests.ui.ml_world import EVIL, World, world

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    yield from world(tmp_path_factory.mktemp("ui-browser-ml"), sqlite_template)


@pytest.fixture(scope="module")
def site(seeded: World) -> Site:
    """The shared fixtures' ``page_for`` signs in to this module's seeded server."""
    return Site(seeded.server)


def test_runs_table_search_and_compare_two_runs(page_for: Any, site: Site, seeded: World) -> None:
    page = page_for("viewer")
    page.get_by_role("link", name="Runs", exact=True).click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.get_by_role("link", name="trial-0").first).to_be_visible()
    expect(page.get_by_text(EVIL).first).to_be_visible()  # a param, shown as text
    screenshot(page, "runs")
    page.get_by_role("searchbox", name="Search").fill("params.lr = '0.1'")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="trial-1")).to_have_count(0)
    page.get_by_role("link", name="Runs", exact=True).click()
    a, b = seeded.runs[:2]
    page.get_by_label(f"compare run {a}").check()
    page.get_by_label(f"compare run {b}").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.get_by_role("heading", name="Compare 2 runs")).to_be_visible()
    assert page.locator("svg[role=img] polyline").count() >= 4
    expect(page.get_by_role("img", name="loss")).to_be_visible()
    screenshot(page, "runs-compare")
    stroke = "getComputedStyle(document.querySelector('svg polyline')).stroke"
    light = page.evaluate(stroke)
    page.get_by_role("button", name="Switch between light and dark theme").click()
    assert page.evaluate(stroke) != light  # series colours follow the theme
    screenshot(page, "runs-compare-dark")
    page.get_by_role("button", name="Switch between light and dark theme").click()
    page.get_by_role("link", name="trial-0").first.click()
    expect(page.get_by_role("img", name="acc")).to_be_visible()
    screenshot(page, "run")


def test_model_page_and_alias_move(page_for: Any, site: Site) -> None:
    page = page_for("maker")
    page.get_by_role("link", name="Models", exact=True).click()
    page.get_by_role("link", name="churn").click()
    expect(page.get_by_role("heading", name="Aliases and their history")).to_be_visible()
    expect(page.get_by_role("img", name="lineage of this version")).to_be_visible()
    expect(page.get_by_text("retrained")).to_be_visible()
    page.get_by_role("textbox", name="Alias").fill("staging")
    page.get_by_role("textbox", name="Reason").fill("try it in staging")
    page.get_by_role("button", name="Move alias").click()
    expect(page.get_by_text("try it in staging")).to_be_visible()
    screenshot(page, "model")


def test_datasets_table_and_sql_box(page_for: Any, site: Site) -> None:
    page = page_for("viewer")
    page.get_by_role("link", name="Datasets", exact=True).click()
    expect(page.get_by_role("link", name="images")).to_be_visible()
    screenshot(page, "datasets")
    page.get_by_role("link", name="customers").click()
    expect(page.get_by_role("heading", name="PII findings").first).to_be_visible()
    page.get_by_role("textbox", name="One SELECT").fill("SELECT id FROM customers ORDER BY id")
    page.get_by_role("button", name="Run query").click()
    expect(page.get_by_text("3 row(s)")).to_be_visible()
    screenshot(page, "table")


def test_deployment_and_simulate_pages(page_for: Any, site: Site) -> None:
    page = page_for("viewer")
    page.get_by_role("link", name="Deployments", exact=True).click()
    page.get_by_role("link", name="churn-api").click()
    expect(page.get_by_role("img", name="traffic split")).to_be_visible()
    expect(page.get_by_role("img", name="drift score per feature (latest check)")).to_be_visible()
    screenshot(page, "deployment")
    page.get_by_role("link", name="Simulate", exact=True).click()
    page.get_by_role("textbox", name="Cluster").fill("2x8xP100")
    page.get_by_role("spinbutton", name="Jobs").fill("40")
    page.get_by_role("button", name="Run replay").click()
    expect(page.get_by_role("img", name="jobs ended over simulated time")).to_be_visible()
    screenshot(page, "simulate")

"""The dashboard in headless Chromium: sign in, every ui-core page, a screenshot of each."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.conftest import Site, screenshot

pytestmark = pytest.mark.browser


def test_sign_in_and_see_the_overview(page_for: Any, site: Site) -> None:
    page = page_for("max")
    assert page.get_by_role("heading", name="Overview").is_visible()
    assert page.get_by_role("link", name="vision").is_visible()
    assert page.get_by_text("secret").count() == 0  # not max's project
    screenshot(page, "overview")


def test_theme_toggle_switches_and_remembers(page_for: Any, site: Site) -> None:
    page = page_for("vera")
    before = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.get_by_role("button", name="Switch between light and dark theme").click()
    after = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert before != after
    page.reload()
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == after


def test_sign_out(page_for: Any, site: Site) -> None:
    page = page_for("vera")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{site.url}/login")
    page.goto(f"{site.url}/")
    assert "/login?next=" in page.url

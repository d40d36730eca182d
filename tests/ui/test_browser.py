"""The dashboard in headless Chromium: sign in, every ui-core page, a screenshot of each."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import PROJECT, Site, python, screenshot

pytestmark = pytest.mark.browser


def test_sign_in_and_see_the_overview(page_for: Any, site: Site) -> None:
    page = page_for("max")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_role("link", name="vision")).to_be_visible()
    expect(page.get_by_text("secret")).to_have_count(0)  # not max's project
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


PAGES = {
    "/": "Overview",
    "/nodes": "Nodes",
    "/jobs": "Jobs",
    f"/projects/{PROJECT}": f"Project {PROJECT}",
    "/alerts": "Alerts",
    "/audit": "Audit log",
}


def test_every_page_renders_with_a_screenshot(page_for: Any, site: Site) -> None:
    page = page_for("ada")
    for path, heading in PAGES.items():
        response = page.goto(f"{site.url}{path}")
        assert response.status == 200, path
        expect(page.get_by_role("heading", name=heading, exact=True), path).to_be_visible()
        assert page.locator("nav[aria-label=Main] a[aria-current=page]").count() <= 1
        screenshot(
            page, "project" if path.startswith("/projects/") else path.strip("/") or "overview"
        )
    for theme in ("dark",):
        page.goto(f"{site.url}/")
        page.get_by_role("button", name="Switch between light and dark theme").click()
        screenshot(page, f"overview-{theme}")


def test_keyboard_users_can_skip_to_the_content(page_for: Any, site: Site) -> None:
    page = page_for("vera")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    assert skip.evaluate("el => el === document.activeElement")
    expect(skip).to_be_visible()
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"


def test_a_viewer_sees_no_submit_form(page_for: Any, site: Site) -> None:
    page = page_for("vera")
    page.goto(f"{site.url}/jobs")
    expect(page.get_by_role("heading", name="Submit a job")).to_have_count(0)


def test_submit_and_cancel_a_job_from_the_page(page_for: Any, site: Site) -> None:
    page = page_for("max")
    page.goto(f"{site.url}/jobs")
    page.get_by_label("Name", exact=True).fill("from-the-browser")
    page.get_by_label("Command").fill(python("import time; time.sleep(300)"))
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    expect(page.get_by_role("heading", name=re.compile("from-the-browser"))).to_be_visible()
    screenshot(page, "job")
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    deadline = time.monotonic() + 60
    while page.locator("h1 .state").inner_text() != "cancelled":
        assert time.monotonic() < deadline, page.locator("h1").inner_text()
        time.sleep(0.5)
        page.reload()
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)


def test_watch_a_log_stream(page_for: Any, site: Site) -> None:
    page = page_for("max")
    page.goto(f"{site.url}/jobs")
    # one line, as a text field holds: a line every 0.7 s
    body = (
        "import time; [(print(f'<b>step {i}</b>', flush=True), time.sleep(0.7)) for i in range(6)]"
    )
    page.get_by_label("Command").fill(python(body))
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    log = page.locator("pre.log")
    # the lines arrive while the page stays open, as text (no <b> element is made)
    log.get_by_text("<b>step 5</b>").wait_for(timeout=60_000)
    expect(log.locator("b")).to_have_count(0)
    page.get_by_text("The job has finished; the log is complete.").wait_for(timeout=30_000)
    screenshot(page, "job-log")


def test_the_overview_refreshes_itself(page_for: Any, site: Site) -> None:
    page = page_for("max")
    running = page.locator(".stat", has_text="Running jobs").locator(".stat-value")
    assert running.inner_text() == "0"
    with site.admin() as admin:
        job = admin.submit_job(PROJECT, ["sleep", "300"], name="keeps-running")
        try:
            # no reload: the live part of the page fetches itself again every 10 s
            page.wait_for_function(
                "() => document.querySelector('[data-refresh]').textContent"
                ".includes('keeps-running')",
                timeout=60_000,
            )
            assert running.inner_text() != "0"
        finally:
            admin.cancel_job(PROJECT, job.id)
            admin.wait_job(PROJECT, job.id, timeout_s=60)  # its process gone with the test

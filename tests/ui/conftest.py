"""Shared dashboard fixtures: a live server with seeded users (one per module), signed-in
HTTP clients, and headless Chromium (``/usr/bin/chromium``) driven by playwright.

Seeded: project ``vision`` with ``vera`` (viewer) and ``max`` (member); project ``secret``
that neither belongs to; ``ada``, a global admin. All sign in with :data:`PASSWORD`.
Other test modules add their own seeding in their own files (through ``site.admin``).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer, sqlite_url
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator, ensure_home

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
PASSWORD = "correct horse battery staple"
PROJECT = "vision"
OTHER_PROJECT = "secret"
USERS = {"ada": "admin", "vera": "viewer", "max": "member"}  # ada: a global admin


class Browser:
    """A signed-in HTTP client of the dashboard: session cookie and the page's CSRF token."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
        self.csrf = ""

    def _remember(self, response: httpx.Response) -> httpx.Response:
        """Keep the CSRF token of the page just shown (as a browser keeps the form)."""
        found = re.search(r'name="csrf" value="([^"]+)"', response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._remember(self.http.get(path, **kw))

    def post(self, path: str, data: dict[str, Any], *, csrf: bool = True) -> httpx.Response:
        body = {**data, "csrf": self.csrf} if csrf else data
        return self._remember(self.http.post(path, data=body))

    def close(self) -> None:
        self.http.close()


@dataclass
class Site:
    """The live server of a test module and its seeded users."""

    live: LiveServer
    clients: list[Browser] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.live.url

    def admin(self):  # type: ignore[no-untyped-def]
        """An SDK client with the bootstrap admin's token (use it in a ``with``)."""
        return self.live.client(ADMIN_TOKEN)

    def anonymous(self) -> Browser:
        client = Browser(self.url)
        self.clients.append(client)
        return client

    def signed_in(self, user: str, password: str = PASSWORD) -> Browser:
        """A client signed in through the ``/login`` form as ``user``."""
        client = self.anonymous()
        client.get("/login")
        response = client.post("/login", {"user": user, "password": password, "next": "/"})
        assert response.status_code == 303, response.text
        client.get("/")
        return client


def python(body: str) -> str:
    """A job's command line (as typed in the submit form) running ``body`` in Python."""
    return shlex.join([sys.executable, "-c", textwrap.dedent(body)])


def seed(site: Site) -> None:
    with site.admin() as admin:
        admin.create_project(PROJECT, "computer vision")
        admin.create_project(OTHER_PROJECT, "nobody else's")
        for name, role in USERS.items():
            admin.create_user(name, password=PASSWORD, is_admin=role == "admin")
            if role != "admin":
                admin.add_member(PROJECT, name, role)


def start_site(directory: Path, template: Path) -> Site:
    settings = Settings(home=directory / "home", store={"url": sqlite_url(template, directory)})
    settings.compute = ComputeSettings(
        simulated_accelerators=[
            SimulatedAccelerator(type="A100", count=2, idle_watts=50, busy_watts=400)
        ],
        node_name="node-1",
        loop_interval_s=0.1,
        heartbeat_interval_s=0.2,
        grace_s=3.0,
        # the dashboard's tests are not about lost nodes: a loaded machine (or a stepped
        # clock) must not turn the node lost and the jobs with it
        node_lost_after_s=3600,
    )
    settings.ui.sample_interval_s = 0.5  # the overview's charts fill within seconds
    ensure_home(settings)
    settings.admin_token = ADMIN_TOKEN
    site = Site(LiveServer(settings).start())
    seed(site)
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Site]:
    """One live server (SQLite) per test module, with the seeded users and projects."""
    live = start_site(tmp_path_factory.mktemp("ui"), sqlite_template)
    try:
        yield live
    finally:
        for client in live.clients:
            client.close()
        live.live.stop()


# -- the browser ------------------------------------------------------------------------------


def chromium_missing(exists: bool, env: Mapping[str, str]) -> tuple[bool, str] | None:
    """None when Chromium is there; else (fail?, why): in CI a missing browser fails the
    browser tests, so CI cannot pass by skipping them; elsewhere they skip."""
    if exists:
        return None
    if env.get("CI"):
        return True, f"{CHROMIUM} is missing in CI: the browser tests must run there"
    return False, f"{CHROMIUM} is not installed (apt-get install -y chromium)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's package; skipped without it, except in CI. One per
    module: playwright's sync API keeps an asyncio loop running in this thread while it is
    open, and ``asyncio.run`` in a later test on the same worker would then fail."""
    missing = chromium_missing(Path(CHROMIUM).exists(), os.environ)
    if missing is not None:
        fail, reason = missing
        if fail:
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)  # as long as the pages' own default below

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page_for(browser: Any, site: Site) -> Iterator[Callable[[str], Any]]:
    """``page_for(user)``: a fresh browser page signed in as ``user`` via the form."""
    contexts: list[Any] = []

    def open_page(user: str) -> Any:
        context = browser.new_context(viewport={"width": 1366, "height": 900})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{site.url}/login")
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(f"{site.url}/")
        return page

    yield open_page
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under tests/ui/artifacts/ named after the page."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name).strip('-')}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

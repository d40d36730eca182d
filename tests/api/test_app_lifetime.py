"""An app that is dropped is freed: nothing process-wide keeps it (or its platform) alive.

FastAPI caches facts about endpoint callables in process-wide LRU caches; an endpoint written
as a closure over the app kept every app ever built alive, and the test suite, which builds
hundreds, slowed to a crawl in garbage collection.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer, sqlite_url
from underlay.config import Settings, ensure_home
from underlay.errors import NotFound


def test_a_stopped_server_frees_its_app(settings: Settings) -> None:
    live = LiveServer(settings).start()
    try:
        for path in ("/api/v1/docs", "/api/v1/healthz"):
            assert httpx.get(live.url + path).status_code == 200
    finally:
        live.stop()
    ref = weakref.ref(live._server.config.app)
    del live
    gc.collect()
    assert ref() is None


def test_apps_of_one_process_share_their_routes_and_each_serves_its_own_platform(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """The API's routes are worked out once per process (``_api_router``); every app built
    after that still answers from its own platform."""
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        s = Settings(
            home=tmp_path / name / "home",
            store={"url": sqlite_url(sqlite_template, tmp_path / name)},
        )
        ensure_home(s)
        s.admin_token = ADMIN_TOKEN
        servers.append(LiveServer(s).start())
    try:
        a, b = servers
        with a.client() as ca, b.client() as cb:
            ca.create_project("only-in-a")
            assert [p.name for p in ca.list_projects()] == ["only-in-a"]
            assert cb.list_projects() == []
            with pytest.raises(NotFound):
                cb.read_project("only-in-a")
    finally:
        for live in servers:
            live.stop()

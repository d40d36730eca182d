"""An app that is dropped is freed: nothing process-wide keeps it (or its platform) alive.

FastAPI caches facts about endpoint callables in process-wide LRU caches; an endpoint written
as a closure over the app kept every app ever built alive, and the test suite, which builds
hundreds, slowed to a crawl in garbage collection.
"""

from __future__ import annotations

import gc
import weakref

import httpx

from tests.conftest import LiveServer
from underlay.config import Settings


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

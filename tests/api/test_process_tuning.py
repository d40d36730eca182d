"""What ``underlay up`` does to its own process once started (``create_app(tune_process=True)``):
the start-up's objects frozen out of the collector's sight, and a short thread switch interval.
A plain app (tests, embedding) leaves the process as it found it."""

from __future__ import annotations

import asyncio
import gc
import sys

from underlay.api.app import SWITCH_INTERVAL_S, create_app
from underlay.config import Settings
from underlay.platform import Platform


def _started(settings: Settings, tune: bool) -> tuple[int, float]:
    settings.compute.local_agent = False
    before = sys.getswitchinterval()
    frozen = gc.get_freeze_count()  # what pytest's collection froze (tests/conftest.py) stays so
    platform = Platform(settings)
    try:
        app = create_app(platform, tune_process=tune)

        async def run() -> tuple[int, float]:
            async with app.router.lifespan_context(app):
                return gc.get_freeze_count() - frozen, sys.getswitchinterval()

        return asyncio.run(run())
    finally:
        platform.close()
        sys.setswitchinterval(before)


def test_a_tuned_server_freezes_its_start_up_and_switches_threads_often(
    settings: Settings,
) -> None:
    frozen, interval = _started(settings, tune=True)
    assert frozen > 1_000  # what start-up built: the app, the platform, their workers
    assert interval == SWITCH_INTERVAL_S < 0.005


def test_a_plain_app_leaves_the_process_as_it_was(settings: Settings) -> None:
    sys.setswitchinterval(0.005)
    frozen, interval = _started(settings, tune=False)
    assert frozen <= 0  # nothing newly frozen (some frozen objects may have been freed)
    assert interval == 0.005

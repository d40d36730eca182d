"""How the dashboard's tests and demo are set up: Chromium's install, CI never skipping the
browser tests, the demo's closing lines, the overview's in-memory history."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from tests.ui.conftest import chromium_missing
from underlay.cli import demo
from underlay.store import Database
from underlay.ui.history import KEEP_S, FleetHistory

ROOT = Path(__file__).resolve().parents[2]


def test_browser_tests_skip_without_chromium_but_fail_in_ci() -> None:
    assert chromium_missing(True, {"CI": "1"}) is None
    skipped = chromium_missing(False, {})
    assert skipped is not None and skipped[0] is False
    failed = chromium_missing(False, {"CI": "true"})
    assert failed is not None and failed[0] is True
    assert "missing in CI" in failed[1]


def test_make_test_installs_chromium_with_apt() -> None:
    services = (ROOT / "scripts" / "ensure-services.sh").read_text()
    assert 'bash "$(dirname "$0")/ensure-chromium.sh"' in services
    script = (ROOT / "scripts" / "ensure-chromium.sh").read_text()
    assert 'apt-ensure.sh" chromium /usr/bin/chromium' in script
    installer = (ROOT / "scripts" / "apt-ensure.sh").read_text()
    assert 'apt-get install -y "$package"' in installer


def test_the_demo_ends_with_the_dashboard_and_serves_in_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serving = demo.dashboard_lines("http://127.0.0.1:9", "pw", "ul_t", serving=True)
    assert "http://127.0.0.1:9/" in serving[0]
    assert "alice" in serving[0] and "pw" in serving[0]
    assert "until Ctrl-C" in serving[-1]
    stopped = demo.dashboard_lines("http://127.0.0.1:9", "pw", "ul_t", serving=False)
    assert "underlay demo --serve" in stopped[0]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", io.StringIO())
    monkeypatch.setattr("sys.stdout", Tty())
    assert demo.in_terminal() is False  # piped input: a script runs it
    monkeypatch.setattr("sys.stdin", Tty())
    assert demo.in_terminal() is True


def test_the_fleet_history_keeps_a_day_of_samples(db: Database) -> None:
    history = FleetHistory(db, interval_s=60)
    assert history._samples.maxlen == KEEP_S // 60
    history.record()
    history.record()
    samples = history.samples()
    assert len(samples) == 2
    assert samples[0].queued == 0 and samples[0].utilization is None
    assert history.samples(since_s=-1) == []  # only samples taken after "now + 1 s"
    history.start()  # the thread samples at once, then every interval
    deadline = time.monotonic() + 30
    while len(history.samples()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    history.stop()
    assert time.time() - samples[0].at < KEEP_S

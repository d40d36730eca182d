"""The node agent's log when its server cannot be reached: quiet at first, then one warning."""

from __future__ import annotations

import logging

import pytest

from underlay.agent import node
from underlay.errors import Unavailable


def test_a_short_outage_is_debug_and_a_long_one_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(node.time, "monotonic", lambda: clock[0])
    exc = Unavailable("cannot reach the server at http://127.0.0.1:1/api/v1/")
    outage: list[float] = []
    with caplog.at_level(logging.DEBUG, logger="underlay.agent.node"):
        for _ in range(5):  # the built-in agent before its server listens, or after it closed
            node._log_unreachable(exc, outage)
            clock[0] += 1.0
        assert [r.levelname for r in caplog.records] == ["DEBUG"] * 5
        clock[0] += node.UNREACHABLE_WARN_S
        for _ in range(3):
            node._log_unreachable(exc, outage)
            clock[0] += 1.0
    levels = [r.levelname for r in caplog.records]
    assert levels.count("WARNING") == 1
    assert "cannot reach the server" in caplog.records[levels.index("WARNING")].getMessage()

"""``GET /audit/verify`` over real HTTP, and the timed checkpoints of a live server.

Checkpoints outside the database are read straight from ``audit-checkpoints.jsonl`` here, as a
person checking the server would, not through the module under test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.audit.support import rewind
from tests.conftest import ADMIN_TOKEN, LiveServer
from underlay.config import Settings
from underlay.store import Database, Scope
from underlay.store.models import AuditCheckpoint


def _outside(settings: Settings) -> list[int]:
    path: Path = settings.home / "audit-checkpoints.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["seq"] for line in path.read_text().splitlines()]


def _live(settings: Settings, every: int, interval_s: float) -> LiveServer:
    return LiveServer(
        Settings(
            home=settings.home,
            store={"url": settings.database_url},
            admin_token=ADMIN_TOKEN,
            compute={"local_agent": False},
            security={"audit_checkpoint_every": every, "audit_checkpoint_interval_s": interval_s},
        )
    ).start()


@pytest.fixture
def counted(settings: Settings) -> Iterator[LiveServer]:
    """A server signing every 3 entries, with a timer too slow to matter."""
    live = _live(settings, 3, 3600)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def timed(settings: Settings) -> Iterator[LiveServer]:
    """A server whose count never triggers a checkpoint: only the timer signs."""
    live = _live(settings, 1000, 0.1)
    try:
        yield live
    finally:
        live.stop()


def _wait_for(condition: Callable[[], bool], what: str, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_api_verify_answers_not_ok_on_a_wiped_log(
    db: Database, settings: Settings, counted: LiveServer
) -> None:
    with counted.client() as admin:
        for name in ("a", "b", "c", "d"):
            admin.create_project(name)
        assert admin.verify_audit().ok
        signed = _outside(settings)
        assert signed and signed == sorted(signed)

        rewind(db, 0)
        report = admin.verify_audit()
    assert not report.ok
    assert report.problem is not None
    assert "but the external checkpoint of " in report.problem
    assert f"covers entry {signed[-1]}" in report.problem


def test_timer_signs_the_tail_of_a_live_server(
    db: Database, settings: Settings, timed: LiveServer
) -> None:
    with timed.client() as admin:
        admin.create_project("sales")
        created = admin.list_audit(action="project.create")[0].seq
        _wait_for(
            lambda: any(seq >= created for seq in _outside(settings)),
            "a timed checkpoint outside the database",
        )
        with db.session(Scope.everything()) as s:
            newest = s.scalar(select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq.desc()))
        assert newest is not None and newest >= created
        assert admin.verify_audit().ok

        rewind(db, created - 1)  # cut the project's creation out of the log
        report = admin.verify_audit()
    assert not report.ok
    assert report.problem is not None
    assert "entries after" in report.problem and "were deleted" in report.problem

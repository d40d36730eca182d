"""Paged listing for the dashboard, on SQLite and PostgreSQL: jobs by page, name and state
(counted in SQL, LIKE wildcards taken literally, tenant scope applied), alerts by page, and a
project's usage per day."""

from __future__ import annotations

import datetime as dt

import pytest

from underlay.compute import alerts, jobs, ledger
from underlay.compute.models import Job, JobAttempt
from underlay.errors import PermissionDenied
from underlay.store import Database, Scope
from underlay.store.models import Project


def _projects(db: Database) -> tuple[int, int]:
    with db.session(Scope.everything()) as s:
        a, b = Project(name="vision"), Project(name="speech")
        s.add_all([a, b])
        s.flush()
        return a.id, b.id


def test_jobs_page_by_offset_filter_by_name_and_count_in_scope(db: Database) -> None:
    vision, speech = _projects(db)
    with db.session(Scope.everything()) as s:
        names = [f"train-{i}" for i in range(7)] + ["100%_done", "100x_done", "a\\b"]
        for i, name in enumerate(names):
            state = "queued" if i % 2 else "succeeded"
            s.add(Job(project_id=vision, name=name, command='["true"]', state=state))
        s.add(Job(project_id=speech, name="train-theirs", command='["true"]'))
    with db.session(Scope(frozenset({vision}))) as s:
        assert jobs.count_jobs(s) == 10  # speech's job is out of scope
        assert jobs.count_jobs(s, name="train") == 7
        assert jobs.count_jobs(s, name="train", states=["queued"]) == 3
        first = jobs.list_jobs(s, name="train", limit=3)
        second = jobs.list_jobs(s, name="train", limit=3, offset=3)
        assert [j.name for j in first] == ["train-6", "train-5", "train-4"]
        assert [j.name for j in second] == ["train-3", "train-2", "train-1"]
        assert [j.name for j in jobs.list_jobs(s, name="%_")] == ["100%_done"]
        assert [j.name for j in jobs.list_jobs(s, name="a\\b")] == ["a\\b"]
        project = s.get(Project, vision)
        assert jobs.count_jobs(s, project=project, states=["succeeded"]) == 5


def test_alerts_page_and_count(db: Database) -> None:
    vision, speech = _projects(db)
    with db.session(Scope.everything()) as s:
        for i in range(5):
            alerts.record_alert(s, "idle-gpu", f"idle {i}", vision, subject=f"gpu-{i}")
        alerts.record_alert(s, "idle-gpu", "theirs", speech, subject="gpu-x")
        resolved = alerts.list_alerts(s, project_id=vision, limit=1)[0]
        alerts.resolve_alert_by_id(s, resolved.id)
    with db.session(Scope(frozenset({vision}))) as s:
        assert alerts.count_alerts(s) == 4
        assert alerts.count_alerts(s, unresolved=False) == 5
        page = alerts.list_alerts(s, unresolved=False, limit=2, offset=2)
        assert [a.message for a in page] == ["idle 2", "idle 1"]


def test_usage_by_day_has_a_row_per_day_with_zeros(db: Database) -> None:
    vision, speech = _projects(db)
    day0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with db.session(Scope.everything()) as s:
        job = Job(project_id=vision, name="j", command='["true"]')
        other = Job(project_id=speech, name="k", command='["true"]')
        s.add_all([job, other])
        s.flush()
        for n, (project, job_id, hours) in enumerate(
            [(vision, job.id, 1), (vision, job.id, 1), (vision, job.id, 50), (speech, other.id, 1)]
        ):
            s.add(
                JobAttempt(
                    job_id=job_id, project_id=project, number=n + 1, node="n", placement="{}",
                    ended_at=day0 + dt.timedelta(hours=hours + 0.5), admitted_at=day0,
                    gpu_s=3600.0, energy_kwh=0.5, cost=2.0, carbon_g=100.0, billed=True,
                )
            )  # fmt: skip
    with db.session(Scope(frozenset({vision}))) as s:
        days = ledger.usage_by_day(s, vision, since=day0, until=day0 + dt.timedelta(days=3))
        assert [d.day.isoformat() for d in days] == ["2026-11-01", "2026-11-02", "2026-11-03"]
        assert [d.energy_kwh for d in days] == [1.0, 0.0, 0.5]
        assert [d.cost for d in days] == [4.0, 0.0, 2.0]
        assert days[0].gpu_hours == 2.0 and days[0].carbon_kg == 0.2
        with pytest.raises(PermissionDenied, match="outside this session's scope"):
            ledger.usage_by_day(s, speech, since=day0, until=day0 + dt.timedelta(days=3))

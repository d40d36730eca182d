"""The ledger (usage arithmetic, billing once per attempt, summaries inside the tenant scope),
budgets and alerts. Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from underlay.compute.alerts import list_alerts, record_alert, resolve_alert, resolve_alert_by_id
from underlay.compute.budgets import budget_status, set_budget
from underlay.compute.ledger import (
    Usage,
    attempt_usage,
    attempt_usage_for,
    bill_attempt,
    integrate_power_kwh,
    intensity_at,
    price_for,
    usage_summary,
)
from underlay.compute.models import Alert, Job, JobAttempt
from underlay.compute.scheduler import PowerModel
from underlay.config import ComputeSettings, Settings
from underlay.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from underlay.store import Database
from underlay.store.db import Scope
from underlay.store.models import Project, User

UTC = dt.UTC
T0 = dt.datetime(2025, 3, 10, 10, 0, tzinfo=UTC)
H = dt.timedelta(hours=1)


def compute(**kw: Any) -> ComputeSettings:
    base: dict[str, Any] = {"prices": {"cpu": 0.04, "A100": 3.0, "default": 2.0}}
    return ComputeSettings(**(base | kw))


# -- prices and intensity -------------------------------------------------------------------


def test_prices_by_type_with_default_fallback(tmp_path: Any) -> None:
    s = compute()
    assert price_for(s, "A100") == 3.0
    assert price_for(s, "T4") == 2.0
    assert price_for(s, "cpu") == 0.04
    assert price_for(Settings(home=tmp_path), "H100") == 2.0  # the whole Settings works too
    with pytest.raises(InvalidInput, match=r"no entry for 'T4' and no 'default'; add one"):
        price_for(compute(prices={"A100": 3.0}), "T4")
    with pytest.raises(InvalidInput, match=r"no entry for 'cpu'"):
        price_for(compute(prices={"default": 3.0}), "cpu")


def test_intensity_is_flat_or_by_utc_hour() -> None:
    hourly = [float(h) for h in range(24)]
    assert intensity_at(compute(grid_intensity_g_per_kwh=250), T0) == 250
    cet = dt.timezone(dt.timedelta(hours=1))
    assert intensity_at(compute(grid_intensity_hourly=hourly), T0.astimezone(cet)) == 10.0
    with pytest.raises(InvalidInput, match=r"when must carry a time zone"):
        intensity_at(compute(), dt.datetime(2025, 1, 1, 12))


# -- usage arithmetic -----------------------------------------------------------------------


def test_cpu_only_attempt_pays_for_its_allocation_and_estimates_energy() -> None:
    u = attempt_usage(compute(), started_at=T0, ended_at=T0 + 2 * H, cpu_s=3600, cpu_milli=2000)
    assert (u.wall_s, u.cpu_s, u.gpu_s) == (7200, 3600, 0)
    assert u.cost == pytest.approx(4 * 0.04)  # 2 cores x 2 h allocated > 1 core-hour used
    assert u.energy_kwh == pytest.approx(3600 * 10 / 3.6e6)  # cpu_s x 10 W per core
    assert u.energy_estimated
    assert u.carbon_g == pytest.approx(u.energy_kwh * 400)


def test_cpu_use_beyond_the_allocation_is_billed() -> None:
    u = attempt_usage(compute(), started_at=T0, ended_at=T0 + H, cpu_s=4 * 3600, cpu_milli=1000)
    assert u.cost == pytest.approx(4 * 0.04)


def test_gpu_estimate_from_the_power_model_weighted_by_share() -> None:
    u = attempt_usage(
        compute(),
        started_at=T0,
        ended_at=T0 + H,
        cpu_s=0,
        gpu_share_milli=2000,
        gpu_type="A100",
        gpu_power_model=PowerModel(60, 400),
        gpu_utilization=0.5,
    )
    assert u.gpu_s == 7200 and u.gpu_hours == 2
    assert u.cost == pytest.approx(2 * 3.0)
    assert u.energy_kwh == pytest.approx(2 * (60 + 340 * 0.5) / 1000)  # 0.46 kWh in one hour
    assert u.energy_estimated


def test_a_fraction_of_a_gpu_is_billed_by_its_share() -> None:
    u = attempt_usage(
        compute(),
        started_at=T0,
        ended_at=T0 + H,
        cpu_s=0,
        gpu_share_milli=250,
        gpu_type="T4",
        gpu_power_model=PowerModel(10, 70),
    )
    assert u.gpu_s == 900 and u.cost == pytest.approx(0.25 * 2.0)
    assert u.energy_kwh == pytest.approx(0.25 * 70 / 1000)  # unknown utilisation: busy


def test_measured_power_and_rapl_energy_are_not_estimates() -> None:
    t = T0.timestamp()
    samples = [(t + 1800, 300.0), (t, 100.0), (t + 3600, 300.0)]  # order does not matter
    u = attempt_usage(
        compute(),
        started_at=T0,
        ended_at=T0 + H,
        cpu_s=100,
        gpu_share_milli=1000,
        gpu_type="A100",
        gpu_power_samples=samples,
        cpu_energy_j=36_000,
    )
    assert u.energy_kwh == pytest.approx((200 * 1800 + 300 * 1800 + 36_000) / 3.6e6)
    assert not u.energy_estimated
    assert integrate_power_kwh(samples) == pytest.approx(0.25)
    assert integrate_power_kwh([(t, 500.0)]) == 0.0


def test_hourly_carbon_splits_a_run_at_the_hour_boundary() -> None:
    hourly = [0.0] * 24
    hourly[10], hourly[11] = 100.0, 500.0
    s = compute(grid_intensity_hourly=hourly)
    start, end = T0 + H / 2, T0 + 3 * H / 2  # 10:30 to 11:30 UTC
    flat = attempt_usage(
        s, started_at=start, ended_at=end, cpu_s=0, gpu_share_milli=1000, gpu_energy_kwh=1.0,
        cpu_energy_j=0,
    )  # fmt: skip
    assert flat.energy_kwh == pytest.approx(1.0)
    assert flat.carbon_g == pytest.approx(0.5 * 100 + 0.5 * 500)
    t = start.timestamp()
    ramp = attempt_usage(
        s, started_at=start, ended_at=end, cpu_s=0, gpu_share_milli=1000,
        gpu_power_samples=[(t, 0.0), (t + 3600, 1000.0)], cpu_energy_j=0,
    )  # fmt: skip
    # 0 -> 1000 W: 0.125 kWh before 11:00 (at 100 g), 0.375 kWh after (at 500 g)
    assert ramp.energy_kwh == pytest.approx(0.5)
    assert ramp.carbon_g == pytest.approx(0.125 * 100 + 0.375 * 500)


def test_a_running_attempt_is_billed_so_far() -> None:
    u = attempt_usage(compute(), started_at=T0, ended_at=T0, cpu_s=0, gpu_share_milli=1000)
    assert (u.wall_s, u.gpu_s, u.cost, u.energy_kwh) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"ended_at": T0 - H}, r"attempt ends \(2025-03-10T09:00:00\+00:00\) before it starts"),
        ({"started_at": T0.replace(tzinfo=None)}, r"started_at must carry a time zone"),
        ({"cpu_s": -1.0}, r"cpu_s must not be negative, got -1\.0"),
        ({"gpu_share_milli": -5}, r"gpu_share_milli must not be negative"),
        ({"gpu_utilization": 37.0}, r"gpu_utilization is a fraction 0\.\.1, got 37\.0"),
        ({"gpu_power_samples": [(0.0, 1.0)], "gpu_energy_kwh": 1.0}, r"not both"),
        ({"gpu_power_samples": [(0.0, -1.0)]}, r"power sample \(0\.0, -1\.0\) is not"),
        ({"cpu_energy_j": -1.0}, r"cpu_energy_j must not be negative"),
    ],
)
def test_impossible_usage_is_refused(kw: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"started_at": T0, "ended_at": T0 + H, "cpu_s": 1.0} | kw
    with pytest.raises(InvalidInput, match=match):
        attempt_usage(compute(), **args)


@dataclass
class Report:
    wall_s: float
    cpu_s: float
    energy_kwh: float | None


def test_usage_of_a_stored_attempt_from_its_agents_report() -> None:
    sims = [{"type": "T4", "idle_watts": 10, "busy_watts": 70}]
    s = compute(simulated_accelerators=sims)
    attempt = JobAttempt(
        started_at=T0, ended_at=T0 + H, cpu_milli=1000, gpu_share_milli=1000, gpu_type="T4"
    )
    estimated = attempt_usage_for(attempt, Report(3600, 60, None), s, T0 + 2 * H)
    assert estimated.energy_kwh == pytest.approx((70 + 60 * 10 / 3600) / 1000)
    measured = attempt_usage_for(attempt, Report(3600, 60, 0.05), s, T0 + 2 * H)
    assert measured.energy_kwh == pytest.approx(0.05 + 600 / 3.6e6)
    assert measured.cost == pytest.approx(2.0 + 0.04)
    never_ran = JobAttempt(ended_at=T0, cpu_milli=1000, gpu_share_milli=0)
    assert attempt_usage_for(never_ran, Report(0, 0, None), s, T0).wall_s == 0


# -- the database ---------------------------------------------------------------------------


@dataclass
class World:
    db: Database
    vision: int
    speech: int
    ann: int
    bob: int


@pytest.fixture
def world(db: Database) -> World:
    with db.session(Scope.everything()) as s:
        projects = [Project(name="vision"), Project(name="speech")]
        users = [User(name="ann"), User(name="bob")]
        s.add_all([*projects, *users])
        s.flush()
        return World(db, projects[0].id, projects[1].id, users[0].id, users[1].id)


def add_attempt(
    w: World,
    project: int,
    user: int | None,
    *,
    job: int | None = None,
    ended: dt.datetime | None = T0,
    started: dt.datetime | None = None,
    share: int = 1000,
    name: str = "train",
) -> tuple[int, int]:
    """A job (or another attempt of ``job``); returns (job id, attempt id)."""
    with w.db.session(Scope.everything()) as s:
        if job is None:
            row = Job(project_id=project, user_id=user, name=name, command='["true"]')
            s.add(row)
            s.flush()
            job = row.id
        number = len(s.scalars(select(JobAttempt).where(JobAttempt.job_id == job)).all()) + 1
        attempt = JobAttempt(
            job_id=job,
            project_id=project,
            user_id=user,
            number=number,
            node="n1",
            placement="{}",
            gpu_type="A100",
            gpu_share_milli=share,
            cpu_milli=1000,
            started_at=started or (ended - H if ended else None),
            ended_at=ended,
        )
        s.add(attempt)
        s.flush()
        return job, attempt.id


def usage(gpu_hours: float, cost: float = 1.0, kwh: float = 0.5, estimated: bool = True) -> Usage:
    return Usage(
        wall_s=3600,
        cpu_s=1800,
        gpu_s=gpu_hours * 3600,
        energy_kwh=kwh,
        energy_estimated=estimated,
        cost=cost,
        carbon_g=kwh * 400,
    )


def bill(w: World, attempt_id: int, u: Usage, scope: Scope | None = None) -> bool:
    with w.db.session(scope or Scope.everything()) as s:
        attempt = s.get(JobAttempt, attempt_id)
        assert attempt is not None
        return bill_attempt(s, attempt, u)


def summary(w: World, scope: Scope | None = None, **kw: Any) -> list[Any]:
    with w.db.session(scope or Scope.everything()) as s:
        return usage_summary(s, **kw)


def test_billing_an_attempt_twice_counts_it_once_and_retries_count_apart(world: World) -> None:
    job, first = add_attempt(world, world.vision, world.ann)
    assert bill(world, first, usage(1.0, cost=3.0))
    assert not bill(world, first, usage(5.0, cost=99.0))  # a retried report: no double count
    _, retry = add_attempt(world, world.vision, world.ann, job=job, ended=T0 + H)
    assert bill(world, retry, usage(2.0, cost=6.0))
    (total,) = summary(world)
    assert (total.key, total.attempts, total.jobs) == (None, 2, 1)
    assert total.to_dict()["wall_hours"] == 2.0
    assert (total.gpu_hours, total.cost, total.cpu_hours) == (3.0, 9.0, 1.0)
    with world.db.session(Scope.everything()) as s:
        row = s.get(JobAttempt, first)
        assert row is not None and row.billed and row.cost == 3.0


def test_two_reporters_racing_bill_an_attempt_once(world: World) -> None:
    _, attempt_id = add_attempt(world, world.vision, world.ann)
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def report(gpu_hours: float) -> None:
        barrier.wait()
        results.append(bill(world, attempt_id, usage(gpu_hours)))

    threads = [threading.Thread(target=report, args=(h,)) for h in (1.0, 2.0, 3.0, 4.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    (total,) = summary(world)
    assert total.attempts == 1 and total.gpu_hours in (1.0, 2.0, 3.0, 4.0)


def test_billing_refreshes_the_attempt_and_refuses_other_projects(world: World) -> None:
    _, attempt_id = add_attempt(world, world.vision, world.ann)
    with world.db.session(Scope.projects(world.vision)) as s:
        attempt = s.get(JobAttempt, attempt_id)
        assert attempt is not None
        attempt.state = "succeeded"  # the caller's unflushed change survives the refresh
        assert bill_attempt(s, attempt, usage(1.5, kwh=0.2, estimated=False))
        assert (attempt.billed, attempt.gpu_s, attempt.energy_estimated) == (True, 5400, False)
        assert attempt.state == "succeeded"
    with world.db.session(Scope.everything()) as s:
        stored = s.get(JobAttempt, attempt_id)
        assert stored is not None and (stored.state, stored.gpu_s) == ("succeeded", 5400)
    with world.db.session(Scope.projects(world.speech)) as s, pytest.raises(
        PermissionDenied, match=r"project \d+ is outside this session's scope"
    ):  # fmt: skip
        bill_attempt(s, JobAttempt(id=attempt_id, project_id=world.vision), usage(9))
    with world.db.session(Scope.everything()) as s, pytest.raises(
        NotFound, match=r"job attempt 999999 does not exist"
    ):  # fmt: skip
        bill_attempt(s, JobAttempt(id=999999, project_id=world.vision), usage(9))


def test_summaries_group_by_project_user_and_job(world: World) -> None:
    _, a = add_attempt(world, world.vision, world.ann, name="resnet")
    _, b = add_attempt(world, world.vision, world.bob, name="vit")
    _, c = add_attempt(world, world.speech, world.bob, name="whisper")
    _, d = add_attempt(world, world.speech, None, name="cron")
    for attempt, gpu_hours in ((a, 1.0), (b, 2.0), (c, 4.0), (d, 8.0)):
        bill(world, attempt, usage(gpu_hours, cost=gpu_hours * 3))
    add_attempt(world, world.vision, world.ann)  # not billed: not counted

    by_project = {r.key: (r.gpu_hours, r.attempts, r.project_id) for r in
                  summary(world, group_by="project")}  # fmt: skip
    assert by_project == {"speech": (12.0, 2, world.speech), "vision": (3.0, 2, world.vision)}
    by_user = summary(world, group_by="user")
    assert [(r.key, r.gpu_hours) for r in by_user] == [
        ("no user", 8.0),  # most expensive first
        ("bob", 6.0),
        ("ann", 1.0),
    ]
    by_job = summary(world, group_by="job", project_id=world.vision)
    assert [(r.key, r.cost) for r in by_job] == [("vit", 6.0), ("resnet", 3.0)]
    (ann,) = summary(world, user_id=world.ann)
    assert (ann.gpu_hours, ann.energy_kwh, ann.carbon_kg) == (1.0, 0.5, 0.2)
    assert ann.energy_estimated
    with pytest.raises(InvalidInput, match=r"group_by must be project, user or job"):
        summary(world, group_by="node")


def test_summaries_by_time_count_attempts_in_the_period_they_ended(world: World) -> None:
    for ended, gpu_hours in ((T0 - 24 * H, 1.0), (T0, 2.0), (T0 + 24 * H, 4.0)):
        _, a = add_attempt(world, world.vision, world.ann, ended=ended)
        bill(world, a, usage(gpu_hours))
    (day,) = summary(world, since=T0, until=T0 + H)
    assert (day.gpu_hours, day.attempts) == (2.0, 1)
    (since,) = summary(world, since=T0)
    assert since.gpu_hours == 6.0
    (empty,) = summary(world, since=T0 + 48 * H)
    assert (empty.attempts, empty.jobs, empty.gpu_hours, empty.cost) == (0, 0, 0.0, 0.0)
    assert not empty.energy_estimated
    with pytest.raises(InvalidInput, match=r"since must carry a time zone"):
        summary(world, since=T0.replace(tzinfo=None))


def test_another_projects_usage_never_shows(world: World) -> None:
    _, mine = add_attempt(world, world.vision, world.ann)
    _, theirs = add_attempt(world, world.speech, world.ann)
    bill(world, mine, usage(1.0))
    bill(world, theirs, usage(50.0))
    scope = Scope.projects(world.vision)
    assert [r.key for r in summary(world, scope, group_by="project")] == ["vision"]
    (asked,) = summary(world, scope, project_id=world.speech)  # asking for it is no way in
    assert asked.attempts == 0
    (same_user,) = summary(world, scope, user_id=world.ann)
    assert same_user.gpu_hours == 1.0
    assert [r.key for r in summary(world, scope, group_by="job")] == ["train"]


# -- budgets --------------------------------------------------------------------------------


def status(w: World, project: int, now: dt.datetime = T0, **kw: Any) -> Any:
    with w.db.session(Scope.everything()) as s:
        return budget_status(s, project, now, **kw)


def set_vision_budget(w: World, **kw: Any) -> None:
    with w.db.session(Scope.projects(w.vision)) as s:
        set_budget(s, w.vision, **kw)


def test_a_project_without_a_budget_is_ok(world: World) -> None:
    st = status(world, world.vision)
    assert (st.state, st.fraction, st.message) == ("ok", None, "project vision has no budget")
    assert st.to_dict()["gpu_hours_limit"] is None
    st.raise_if_blocked()


@pytest.mark.parametrize(
    ("used", "state", "message"),
    [
        (12.0, "ok", "project vision used 12.0 of 40 GPU-hours this month (30%)"),
        (33.0, "warn", "project vision used 33.0 of 40 GPU-hours this month (82%), past the 80%"),
        (41.5, "blocked", "project vision used 41.5 of 40 GPU-hours this month (104%)"),
    ],
)
def test_gpu_hour_budget_warns_then_blocks(
    world: World, used: float, state: str, message: str
) -> None:
    set_vision_budget(world, gpu_hours_per_month=40)
    _, a = add_attempt(world, world.vision, world.ann, ended=T0)
    bill(world, a, usage(used))
    _, last_month = add_attempt(world, world.vision, world.ann, ended=T0 - 30 * 24 * H)
    bill(world, last_month, usage(100.0))
    st = status(world, world.vision, T0 + H)
    assert (st.state, st.gpu_hours_used, st.gpu_hours_limit) == (state, used, 40)
    assert st.message.startswith(message)
    assert st.month_start == dt.datetime(2025, 3, 1, tzinfo=UTC)
    if state == "blocked":
        with pytest.raises(Conflict, match=r"\(104%\); new jobs are refused until next month"):
            st.raise_if_blocked()
    else:
        st.raise_if_blocked()


def test_money_budget_counts_running_attempts_so_far(world: World) -> None:
    set_vision_budget(world, money_per_month=10.0, warn_fraction=0.5)
    _, a = add_attempt(world, world.vision, world.ann)
    bill(world, a, usage(1.0, cost=3.0))
    # still running, started 2 h ago on 1 A100 and 1 CPU: 2 x 3.0 + 2 x 0.04
    add_attempt(world, world.vision, world.ann, ended=None, started=T0)
    st = status(world, world.vision, T0 + 2 * H, settings=compute())
    assert st.gpu_hours_used == pytest.approx(3.0)
    assert st.money_used == pytest.approx(3.0 + 6.08)
    assert st.state == "warn"
    assert st.message.startswith("project vision spent 9.08 of 10.00 USD this month (91%)")
    without_prices = status(world, world.vision, T0 + 2 * H)  # GPU-hours count regardless
    assert without_prices.gpu_hours_used == pytest.approx(3.0)


def test_the_tighter_budget_decides(world: World) -> None:
    set_vision_budget(world, gpu_hours_per_month=100, money_per_month=5.0)
    _, a = add_attempt(world, world.vision, world.ann)
    bill(world, a, usage(2.0, cost=6.0))
    st = status(world, world.vision)
    assert st.state == "blocked" and st.fraction == pytest.approx(1.2)
    assert "spent 6.00 of 5.00 this month (120%)" in st.message


def test_a_zero_budget_blocks_and_a_budget_can_be_replaced(world: World) -> None:
    set_vision_budget(world, gpu_hours_per_month=0)
    assert status(world, world.vision).state == "blocked"
    set_vision_budget(world, gpu_hours_per_month=10)
    assert status(world, world.vision).state == "ok"


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"gpu_hours_per_month": -1}, InvalidInput, r"gpu_hours_per_month must not be negative"),
        ({"money_per_month": -5.0}, InvalidInput, r"money_per_month must not be negative"),
        ({"warn_fraction": 0.0}, InvalidInput, r"warn_fraction is a fraction in \(0, 1\]"),
        ({"warn_fraction": 1.5}, InvalidInput, r"warn_fraction is a fraction in \(0, 1\]"),
    ],
)
def test_bad_budgets_are_refused(
    world: World, kw: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        set_vision_budget(world, **kw)


def test_budgets_of_unknown_or_foreign_projects_are_not_found(world: World) -> None:
    with world.db.session(Scope.projects(world.vision)) as s:
        with pytest.raises(NotFound, match=r"project 999999 does not exist"):
            set_budget(s, 999999, gpu_hours_per_month=1)
        with pytest.raises(NotFound, match=rf"project {world.speech} does not exist"):
            budget_status(s, world.speech, T0)


# -- alerts ---------------------------------------------------------------------------------


def test_alerts_deduplicate_until_resolved(world: World) -> None:
    with world.db.session(Scope.everything()) as s:
        first, new = record_alert(s, "idle-gpu", "idle 10 min", world.vision, subject="attempt 1")
        again, new_again = record_alert(s, "idle-gpu", "idle 20 min", world.vision,
                                        subject="attempt 1")  # fmt: skip
        other, _ = record_alert(s, "idle-gpu", "idle", world.vision, subject="attempt 2")
        assert new and not new_again and again.id == first.id and other.id != first.id
        assert again.message == "idle 20 min"
        resolve_alert_by_id(s, first.id)
        resolve_alert_by_id(s, first.id)  # again: harmless
        later, new_later = record_alert(s, "idle-gpu", "idle again", world.vision,
                                        subject="attempt 1")  # fmt: skip
        assert new_later and later.id != first.id
        assert resolve_alert(s, "idle-gpu", "attempt 1") == 1
        assert resolve_alert(s, "idle-gpu", "attempt 1") == 0
        assert [a.subject for a in list_alerts(s)] == ["attempt 2"]
        assert len(list_alerts(s, unresolved=False)) == 3
        with pytest.raises(NotFound, match=r"alert 999999 does not exist"):
            resolve_alert_by_id(s, 999999)
        with pytest.raises(InvalidInput, match=r"an alert needs a kind"):
            record_alert(s, "", "x")


def test_alerts_stay_inside_the_tenant_scope(world: World) -> None:
    with world.db.session(Scope.everything()) as s:
        theirs, _ = record_alert(s, "budget", "speech at 90%", world.speech, subject="budget")
        record_alert(s, "node", "node n1 lost", subject="n1")  # cluster-wide
    with world.db.session(Scope.projects(world.vision)) as s:
        _, new = record_alert(s, "budget", "vision at 85%", world.vision, subject="budget")
        assert new  # not de-duplicated against another project's alert
        assert [a.message for a in list_alerts(s)] == ["vision at 85%"]
        with pytest.raises(NotFound, match=rf"alert {theirs.id} does not exist"):
            resolve_alert_by_id(s, theirs.id)
        with pytest.raises(PermissionDenied, match=r"only an unscoped \(admin\) session"):
            record_alert(s, "node", "x", subject="n2")
        with pytest.raises(PermissionDenied, match=r"outside this session's scope"):
            record_alert(s, "budget", "x", world.speech)
    with world.db.session(Scope.everything()) as s:
        # the same kind and subject in two projects are two alerts, for an admin too
        _, new = record_alert(s, "budget", "vision at 95%", world.vision, subject="budget")
        assert not new
        assert len(s.scalars(select(Alert).where(Alert.kind == "budget")).all()) == 2
        assert len(list_alerts(s)) == 3
        assert len(list_alerts(s, project_id=world.speech)) == 1


@pytest.mark.parametrize(
    ("report", "match"),
    [
        (Report(1e308, 0, None), r"wall_s must be at most 316224000 s, got 1e\+308"),
        (Report(float("inf"), 0, None), r"wall_s must be a finite number, got inf"),
        (Report(10, float("inf"), None), r"cpu_s must be a finite number"),
        (Report(10, 1, float("nan")), r"energy_kwh must not be negative, got nan"),
    ],
)
def test_an_agents_absurd_report_is_refused_not_overflowed(report: Report, match: str) -> None:
    never_started = JobAttempt(ended_at=T0, cpu_milli=1000, gpu_share_milli=1000)
    with pytest.raises(InvalidInput, match=match):
        attempt_usage_for(never_started, report, compute(), T0)


@pytest.mark.parametrize("wall_s", [1e308, float("inf"), float("nan")])
def test_the_attempt_report_schema_refuses_absurd_durations(wall_s: float) -> None:
    from pydantic import ValidationError

    from underlay.compute.schemas import AttemptEnded

    with pytest.raises(ValidationError, match="wall_s"):
        AttemptEnded.model_validate({"state": "failed", "wall_s": wall_s})

"""``/metrics`` scraped from a live server over HTTP and parsed by prometheus_client."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from underlay.compute.models import AcceleratorRow, Alert
from underlay.compute.states import JobState
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator
from underlay.store import Scope
from underlay.store.models import Project

Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def settings(settings: Settings) -> Settings:  # type: ignore[override]
    settings.compute = ComputeSettings(
        simulated_accelerators=[
            SimulatedAccelerator(type="A100", count=2, idle_watts=50, busy_watts=400)
        ],
        node_name="node-1",
        loop_interval_s=0.1,
        heartbeat_interval_s=30,  # the first registers the node; none overwrites a test's edit
    )
    return settings


def _scrape(url: str, token: str | None, path: str = "/metrics") -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url + path, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    found: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


def _wait(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return found


def _alert(server: Any, project: str, kind: str) -> None:
    with server.platform.db.session(Scope.everything()) as session:
        pid = session.query(Project.id).filter(Project.name == project).scalar()
        session.add(Alert(kind=kind, project_id=pid, subject="s", message="m"))


def test_no_token_is_401_and_a_bad_one_too(server: Any) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    bad = {"Authorization": "Bearer ul_nope"}
    assert httpx.get(f"{server.url}/api/v1/metrics", headers=bad).status_code == 401


@pytest.mark.slow
def test_an_admin_sees_values_move(server: Any, admin: Any) -> None:
    admin.create_project("shop")
    _wait("the local node", admin.list_nodes)
    before = _scrape(server.url, server.admin_token)
    assert _value(before, "underlay_node_up") >= 1
    assert _value(before, "underlay_node_memory_bytes") > 0
    for name in (
        "underlay_node_cpu_utilization_ratio",
        "underlay_node_cpu_cores",
        "underlay_scheduler_round_duration_seconds_count",
        "underlay_scheduler_round_duration_seconds_sum",
        "underlay_scheduler_last_round_duration_seconds",
    ):
        assert name in before, name
    gpu = {"node": "node-1", "type": "A100"}
    for name in (
        "underlay_accelerator_utilization_ratio",
        "underlay_accelerator_memory_used_bytes",
    ):
        assert len([s for s in before[name] if gpu.items() <= s[0].items()]) == 2, name
    assert _value(before, "underlay_accelerator_healthy", **gpu) == 2
    assert _value(before, "underlay_accelerator_memory_bytes", index="1", **gpu) > 0
    assert "underlay_accelerator_power_watts" not in before  # simulated: no measured draw
    with server.platform.db.session(Scope.everything()) as session:
        session.query(AcceleratorRow).filter(AcceleratorRow.index == 1).update(
            {"power_watts": 123.5}
        )
    power = _scrape(server.url, server.admin_token)["underlay_accelerator_power_watts"]
    assert power == [({"node": "node-1", "index": "1", "vendor": power[0][0]["vendor"],
                       "type": "A100"}, 123.5)]  # fmt: skip
    assert _value(before, "underlay_scheduler_queue_depth", project="shop") == 0
    states = {labels["state"] for labels, v in before["underlay_jobs"] if v == 0}
    assert states == {s.value for s in JobState}  # every state, zeros included
    route = {"route": "/api/v1/projects/{project}", "method": "GET", "status": "200"}
    seen = _value(before, "underlay_api_request_duration_seconds_count", **route)
    admin.read_project("shop")
    admin.submit_job("shop", ["python", "-c", "pass"], node_selector=["zone=nowhere"])
    after = _scrape(server.url, server.admin_token, "/api/v1/metrics")
    assert _value(after, "underlay_api_request_duration_seconds_count", **route) == seen + 1
    assert _value(after, "underlay_scheduler_queue_depth", project="shop") == 1
    assert _value(after, "underlay_jobs", project="shop", state="queued") == 1
    assert httpx.get(f"{server.url}/api/v1/nowhere/42").status_code == 404
    _alert(server, "shop", "budget")
    alerts = _scrape(server.url, server.admin_token)
    assert _value(alerts, "underlay_alerts_open", project="shop", kind="budget") == 1
    assert _value(alerts, "underlay_alerts_raised_total", project="shop", kind="budget") == 1
    unmatched = {"route": "unmatched", "status": "404"}  # raw paths never become labels
    assert _value(alerts, "underlay_api_request_duration_seconds_count", **unmatched) == 1
    assert not any("nowhere" in str(labels) for s in alerts.values() for labels, _ in s)


@pytest.mark.slow
def test_members_see_only_their_projects(server: Any, admin: Any) -> None:
    for project in ("vision", "finance"):
        admin.create_project(project)
        _alert(server, project, "idle_gpu")
    admin.create_user("alice")
    admin.add_member("vision", "alice", "viewer")
    admin.create_user("nobody")
    alice = admin.create_token("t", user="alice").token
    nobody = admin.create_token("t", user="nobody").token
    mine = _scrape(server.url, alice)
    projects = {labels.get("project") for series in mine.values() for labels, _ in series}
    assert projects == {"vision"}
    assert _value(mine, "underlay_alerts_open", project="vision") == 1
    for platform_wide in ("underlay_node_up", "underlay_api_request_duration_seconds_count"):
        assert platform_wide not in mine
    assert _scrape(server.url, nobody) == {}

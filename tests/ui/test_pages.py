"""The overview, nodes, project, alerts and audit pages over HTTP: real data, scope (404 for
another project), RBAC (viewers get no write controls; a forged post is 403 and audited),
escaping, paging."""

from __future__ import annotations

import time

from sqlalchemy import select

from tests.ui.conftest import OTHER_PROJECT, PROJECT, Site
from underlay.compute import alerts
from underlay.store import Scope
from underlay.store.models import AuditEntry, Project


def _until(check, timeout_s: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.2)
    return result


def _raise_alert(site: Site, project: str, message: str, subject: str) -> int:
    with site.live.platform.db.session(Scope.everything()) as s:
        project_id = s.scalar(select(Project.id).where(Project.name == project))
        alert, _ = alerts.record_alert(s, "idle-gpu", message, project_id, subject=subject)
        return alert.id


def test_the_overview_shows_the_fleet_and_charts_it_over_time(site: Site) -> None:
    max_ = site.signed_in("max")
    page = _until(lambda: (p := max_.get("/")) and "1 / 1" in p.text and p)
    assert "A100" in page.text
    assert page.text.count('role="img"') >= 3
    # the sampler runs every 0.5 s here: soon the charts have lines, not "no data yet"
    charted = _until(lambda: (p := max_.get("/")) and p.text.count("<polyline") >= 3 and p)
    assert "Utilisation over time" in charted.text
    assert "Queue depth over time" in charted.text
    live = max_.get("/overview/live")
    assert live.status_code == 200
    assert "<html" not in live.text
    assert "Spend this month" in live.text


def test_the_nodes_page_lists_node_and_accelerators(site: Site) -> None:
    vera = site.signed_in("vera")
    page = _until(lambda: (p := vera.get("/nodes")) and "node-1" in p.text and p)
    assert page.text.count("A100") >= 2
    assert "Last heartbeat" in page.text


def test_a_project_page_shows_members_quotas_and_budget(site: Site) -> None:
    with site.admin() as admin:
        admin.set_quota(PROJECT, "A100", 1, borrow_limit=2)
        admin.set_budget(PROJECT, gpu_hours_per_month=100.0, money_per_month=50.0)
    vera = site.signed_in("vera")
    page = vera.get(f"/projects/{PROJECT}")
    assert page.status_code == 200
    for text in ("vera", "max", "viewer", "member", "A100", "GPU-hours", "Spend per day"):
        assert text in page.text
    assert page.text.count('role="img"') >= 4
    assert vera.get(f"/projects/{OTHER_PROJECT}").status_code == 404
    assert vera.get("/projects/no-such-project").status_code == 404
    assert vera.get("/projects/" + "x" * 100).status_code in (400, 404)
    ada = site.signed_in("ada")
    assert ada.get(f"/projects/{OTHER_PROJECT}").status_code == 200


def test_alerts_resolve_by_members_only_and_escape_their_text(site: Site) -> None:
    alert_id = _raise_alert(site, PROJECT, "<script>alert('x')</script> idle", "gpu-0")
    hidden = _raise_alert(site, OTHER_PROJECT, "not for vision", "gpu-1")
    vera = site.signed_in("vera")
    page = vera.get("/alerts")
    assert "&lt;script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert "not for vision" not in page.text
    assert f"/alerts/{alert_id}/resolve" not in page.text
    forged = vera.post(f"/alerts/{alert_id}/resolve", {})
    assert forged.status_code == 403
    assert vera.post(f"/alerts/{hidden}/resolve", {}).status_code == 404
    with site.live.platform.db.session(Scope.everything()) as s:
        denied = s.scalars(
            select(AuditEntry).where(
                AuditEntry.actor == "vera", AuditEntry.action == "alert.resolve"
            )
        ).all()
    # the forged post is refused; another project's alert is "not found", as in the API
    assert [e.outcome for e in sorted(denied, key=lambda e: e.seq)] == ["denied", "error"]
    max_ = site.signed_in("max")
    assert f"/alerts/{alert_id}/resolve" in max_.get("/alerts").text
    assert max_.post(f"/alerts/{alert_id}/resolve", {}).status_code == 303
    assert f"/alerts/{alert_id}/resolve" not in max_.get("/alerts").text
    assert "resolved" in max_.get("/alerts", params={"resolved": "true"}).text


def test_the_audit_page_is_for_global_admins_with_filters_paging_and_verification(
    site: Site,
) -> None:
    max_ = site.signed_in("max")
    assert max_.get("/audit").status_code == 403
    ada = site.signed_in("ada")
    vera = site.signed_in("vera")
    for _ in range(55):  # refused posts: entries by vera to filter on, more than a page
        vera.post("/logout", {}, csrf=False)
    page = ada.get("/audit", params={"actor": "vera", "outcome": "denied"})
    assert page.status_code == 200
    assert page.text.count("<td>vera</td>") == 50
    assert "<td>max</td>" not in page.text
    first = ada.get("/audit")
    assert "Older entries" in first.text  # well over 50 entries by now
    older = first.text.split('href="/audit?before=')[1].split('"')[0]
    second = ada.get(f"/audit?before={older}")
    assert second.status_code == 200
    assert f'<td class="num">{int(older) - 1}</td>' in second.text
    verified = ada.get("/audit", params={"verify": "true"})
    assert "Intact." in verified.text
    assert ada.get("/audit", params={"outcome": "maybe"}).status_code == 400
    assert ada.get("/audit", params={"actor": "a\x00b"}).status_code == 400

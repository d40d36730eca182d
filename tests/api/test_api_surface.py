"""Issue 7, the API-surface findings: tenant scope of lineage, roles on alerts, refusals that
are always audited, and project creation as a grant."""

from __future__ import annotations

import httpx
import pytest

from underlay.compute import alerts
from underlay.errors import NotFound, PermissionDenied


@pytest.fixture
def two_projects(server, admin):  # type: ignore[no-untyped-def]
    """alice: member of alpha and bravo; victor: viewer of alpha."""
    for name in ("alpha", "bravo"):
        admin.create_project(name)
    admin.create_user("alice")
    admin.create_user("victor")
    admin.add_member("alpha", "alice", "member")
    admin.add_member("bravo", "alice", "member")
    admin.add_member("alpha", "victor", "viewer")
    clients = {u: server.client(admin.create_token("t", user=u).token) for u in ("alice", "victor")}
    yield clients
    for c in clients.values():
        c.close()


def test_lineage_stays_in_the_project_of_the_url(two_projects) -> None:  # type: ignore[no-untyped-def]
    alice = two_projects["alice"]
    alice.add_lineage("bravo", ("dataset", "d1"), "input_of", ("run", "x"))
    alice.add_lineage("alpha", ("dataset", "a1"), "input_of", ("run", "y"))
    graph = alice.lineage("alpha", "run", "x")
    assert graph.edges == [] and [n.id for n in graph.nodes] == ["x"]
    assert [e.src.id for e in alice.lineage("bravo", "run", "x").edges] == ["d1"]


def _alert(server, project: str) -> int:  # type: ignore[no-untyped-def]
    from underlay.identity import SYSTEM, read_project

    with server.platform.unit(SYSTEM, "alert.raise", "test", audited=False) as u:
        found = read_project(u.session, project, SYSTEM)
        alert, _ = alerts.record_alert(u.session, "idle-gpu", "idle", project_id=found.id)
        return alert.id


def test_a_viewer_cannot_resolve_alerts(server, admin, two_projects) -> None:  # type: ignore[no-untyped-def]
    alert_id = _alert(server, "alpha")
    victor, alice = two_projects["victor"], two_projects["alice"]
    with pytest.raises(PermissionDenied, match=r"viewer .* may not write"):
        victor.resolve_alert(alert_id)
    assert [a.id for a in victor.list_alerts()] == [alert_id]  # still open
    assert alice.resolve_alert(alert_id).resolved_at is not None
    denied = admin.list_audit(action="alert.resolve", outcome="denied")
    assert [e.actor for e in denied] == ["victor"]


def test_a_cluster_alert_is_resolved_by_a_global_admin_only(server, admin, two_projects) -> None:  # type: ignore[no-untyped-def]
    from underlay.identity import SYSTEM

    with server.platform.unit(SYSTEM, "alert.raise", "test", audited=False) as u:
        alert, _ = alerts.record_alert(u.session, "node-hot", "hot")
        alert_id = alert.id
    with pytest.raises(NotFound, match=f"alert {alert_id}"):
        two_projects["alice"].resolve_alert(alert_id)
    assert admin.resolve_alert(alert_id).resolved_at is not None


@pytest.mark.parametrize(
    ("path", "status", "actor", "action", "project"),
    [
        ("/projects/a%00b/blobs", 404, "alice", "blob.list", "a\\x00b"),
        ("/projects/" + "p" * 70 + "/jobs", 404, "alice", "job.list", "p" * 63 + "\u2026"),
        ("/alerts?project=", 404, "alice", "alert.list", '""'),
        ("/projects/x%1b%5b31m/lineage/run/r", 404, "alice", "lineage.read", "x\\x1b[31m"),
        ("/projects/a%00b", 401, "anonymous", "GET /api/v1/projects/a\\x00b", None),
    ],
)
def test_every_refusal_is_audited_with_the_offending_value_escaped(  # type: ignore[no-untyped-def]
    server, admin, two_projects, path, status, actor, action, project
) -> None:
    token = admin.create_token("raw", user="alice").token if actor == "alice" else "ul_bad"
    r = httpx.get(f"{server.url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == status, r.text
    entries = [e for e in admin.list_audit(actor=actor, limit=1000) if e.outcome != "ok"]
    assert [(e.action, e.project) for e in entries][-1:] == [(action, project)]
    assert admin.verify_audit().ok


def test_creating_projects_needs_the_project_creator_grant(server, admin, two_projects) -> None:  # type: ignore[no-untyped-def]
    victor = two_projects["victor"]
    with pytest.raises(PermissionDenied, match=r"may not create projects.*'project-creator'"):
        victor.create_project("mine")
    assert admin.grant("victor", "project-creator").grants == ["project-creator"]
    assert victor.create_project("mine").name == "mine"
    assert [(m.user, m.role) for m in victor.list_members("mine")] == [("victor", "admin")]
    assert admin.revoke_grant("victor", "project-creator").grants == []
    with pytest.raises(PermissionDenied, match="may not create projects"):
        victor.create_project("another")
    assert [p.name for p in admin.list_projects()] == ["alpha", "bravo", "mine"]
    actions = [(e.actor, e.action, e.outcome) for e in admin.list_audit(limit=1000)]
    assert ("victor", "project.create", "denied") in actions
    assert ("admin", "user.grant", "ok") in actions and ("admin", "user.revoke", "ok") in actions


def test_only_a_global_admin_grants(two_projects) -> None:  # type: ignore[no-untyped-def]
    alice = two_projects["alice"]
    with pytest.raises(PermissionDenied, match="global admin"):
        alice.grant("alice", "project-creator")
    with pytest.raises(PermissionDenied, match="may not create projects"):
        alice.create_project("mine")


@pytest.mark.parametrize(
    ("policy", "grantee", "plain"), [("admins", False, False), ("anyone", True, True)]
)
def test_project_creation_is_a_setting(  # type: ignore[no-untyped-def]
    server, admin, two_projects, policy, grantee, plain
) -> None:
    server.platform.settings.security.project_creation = policy
    admin.grant("alice", "project-creator")
    for who, allowed in (("alice", grantee), ("victor", plain)):
        if allowed:
            assert two_projects[who].create_project(f"by-{who}").name == f"by-{who}"
        else:
            needs = "may not create projects: it needs a global admin"
            with pytest.raises(PermissionDenied, match=needs):
                two_projects[who].create_project(f"by-{who}")
    assert admin.create_project("by-admin").name == "by-admin"


def test_an_unknown_grant_is_a_problem(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("dora")
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    r = httpx.put(f"{server.url}/api/v1/users/dora/grants/superuser", headers=headers)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert admin.grant("dora", "project-creator").grants == ["project-creator"]


def test_the_openapi_document_names_every_problem_response(server) -> None:  # type: ignore[no-untyped-def]
    spec = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=120).json()
    assert "Problem" in spec["components"]["schemas"]
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if not path.endswith(("/healthz", "/readyz"))
    ]
    assert len(operations) > 15
    for path, method, op in operations:
        for status in ("400", "401", "403", "404", "409", "413", "422", "429", "431"):
            content = op["responses"].get(status, {}).get("content", {})
            assert list(content) == ["application/problem+json"], (method, path, status)
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }

"""Authentication and authorization through real HTTP: 401, 404 without leaks, 403, audit."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import httpx
import pytest
from sqlalchemy import select, update

from underlay.client import Client
from underlay.errors import Conflict, NotFound, PermissionDenied, Unauthenticated
from underlay.store import Scope
from underlay.store.models import ApiToken


@pytest.fixture
def people(server, admin):  # type: ignore[no-untyped-def]
    admin.create_project("vision")
    admin.create_project("finance")
    tokens = {}
    for user, project, role in [
        ("alice", "vision", "member"),
        ("victor", "vision", "viewer"),
        ("bob", "finance", "member"),
    ]:
        admin.create_user(user)
        admin.add_member(project, user, role)
        tokens[user] = admin.create_token("t", user=user).token
    clients = {u: server.client(t) for u, t in tokens.items()}
    yield clients
    for c in clients.values():
        c.close()


def test_no_token_is_401_with_problem(server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{server.url}/api/v1/projects")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:underlay:problem:unauthenticated"
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Bearer" in r.headers["www-authenticate"]


def test_wrong_token_is_401(server) -> None:  # type: ignore[no-untyped-def]
    with (
        server.client("ul_not-a-real-token") as c,
        pytest.raises(Unauthenticated, match="not valid"),
    ):
        c.list_projects()


def test_revoked_token_is_401(server, admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("short")
    with server.client(created.token) as c:
        assert c.me().name == "admin"
        admin.revoke_token(created.id)
        with pytest.raises(Unauthenticated, match="revoked"):
            c.me()


def test_expired_token_is_401(server, admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("soon", expires_in_days=1)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with server.platform.db.session(Scope.everything()) as s:  # time passes
        s.execute(update(ApiToken).where(ApiToken.id == created.id).values(expires_at=past))
    with server.client(created.token) as c, pytest.raises(Unauthenticated, match="expired"):
        c.me()


def test_deactivated_user_loses_access(server, admin, people) -> None:  # type: ignore[no-untyped-def]
    admin.update_user("alice", is_active=False)
    with pytest.raises(Unauthenticated):
        people["alice"].list_projects()


def test_deactivation_revokes_tokens_for_good(server, admin, people) -> None:  # type: ignore[no-untyped-def]
    """Reactivating a user does not bring back the tokens they held: those are revoked."""
    admin.update_user("alice", is_active=False)
    admin.update_user("alice", is_active=True)
    with pytest.raises(Unauthenticated, match="the token was revoked"):
        people["alice"].list_projects()
    fresh = admin.create_token("again", user="alice").token
    with server.client(fresh) as alice:
        assert [p.name for p in alice.list_projects()] == ["vision"]


def test_tokens_are_stored_as_their_sha256_only(server, admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("stored")
    with server.platform.db.session(Scope.everything()) as s:
        row = s.get(ApiToken, created.id)
        assert row is not None
        stored = {c.key: getattr(row, c.key) for c in ApiToken.__table__.columns}
    assert stored["token_hash"] == hashlib.sha256(created.token.encode()).hexdigest()
    leaked = [k for k, v in stored.items() if isinstance(v, str) and created.token[10:] in v]
    assert leaked == []  # only the 10-character prefix is kept in the clear


def test_other_project_is_404_like_a_missing_one(people) -> None:  # type: ignore[no-untyped-def]
    bob = people["bob"]
    with pytest.raises(NotFound, match="project 'vision' not found") as hidden:
        bob.read_project("vision")
    with pytest.raises(NotFound, match="project 'nothing' not found") as missing:
        bob.read_project("nothing")
    assert type(hidden.value) is type(missing.value)
    with pytest.raises(NotFound):
        bob.list_blobs("vision")
    assert [p.name for p in bob.list_projects()] == ["finance"]


def test_viewer_cannot_write_but_can_read(people) -> None:  # type: ignore[no-untyped-def]
    victor, alice = people["victor"], people["alice"]
    blob = alice.upload_blob("vision", b"features")
    assert victor.download_blob("vision", blob.digest) == b"features"
    with pytest.raises(PermissionDenied, match=r"viewer .* may not write"):
        victor.upload_blob("vision", b"more")
    assert len(alice.list_blobs("vision")) == 1


def test_member_cannot_manage_members(people) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDenied, match="admin role"):
        people["alice"].add_member("vision", "bob", "viewer")


def test_non_admin_cannot_create_users(people) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDenied, match="global admin"):
        people["alice"].create_user("mallory")


def test_project_keeps_an_admin(server, admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_user("carol")
    admin.grant("carol", "project-creator")
    token = admin.create_token("t", user="carol").token
    with server.client(token) as carol:
        carol.create_project("solo")
        assert [(m.user, m.role) for m in carol.list_members("solo")] == [("carol", "admin")]
        with pytest.raises(Conflict, match="no admin left"):
            carol.update_member("solo", "carol", "member")
        with pytest.raises(Conflict, match="'solo' would have no admin left"):
            carol.remove_member("solo", "carol")
        assert [(m.user, m.role) for m in carol.list_members("solo")] == [("carol", "admin")]
        admin.create_user("dan")
        carol.add_member("solo", "dan", "admin")
        carol.remove_member("solo", "carol")  # another admin remains: allowed
    assert [(m.user, m.role) for m in admin.list_members("solo")] == [("dan", "admin")]


def test_refusals_are_audited(server, admin, people) -> None:  # type: ignore[no-untyped-def]
    httpx.get(f"{server.url}/api/v1/projects")
    with server.client("ul_wrong") as c, pytest.raises(Unauthenticated):
        c.me()
    with pytest.raises(NotFound):
        people["bob"].read_project("vision")
    with pytest.raises(PermissionDenied):
        people["victor"].upload_blob("vision", b"x")
    denied = admin.list_audit(outcome="denied", limit=1000)
    seen = {(e.actor, e.action) for e in denied}
    assert ("anonymous", "GET /api/v1/projects") in seen
    assert ("anonymous", "GET /api/v1/users/me") in seen
    assert ("bob", "project.read") in seen
    assert ("victor", "blob.create") in seen
    assert admin.verify_audit().ok


def test_mutations_are_audited_with_client_address(admin) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("audited")
    entries = admin.list_audit(action="project.create")
    assert [(e.actor, e.resource, e.outcome, e.client) for e in entries] == [
        ("admin", "project:audited", "ok", "127.0.0.1")
    ]


def test_token_secret_is_shown_once(admin) -> None:  # type: ignore[no-untyped-def]
    created = admin.create_token("once")
    listed = [t for t in admin.list_tokens() if t.id == created.id]
    assert listed and not hasattr(listed[0], "token")
    assert created.token.startswith(created.prefix)


def test_sdk_from_env(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("UNDERLAY_URL", server.url)
    monkeypatch.setenv("UNDERLAY_TOKEN", server.admin_token)
    with Client.from_env() as c:
        assert c.me().is_admin


# -- outsiders see nothing of another project ---------------------------------------------------

# (method, path with {p} for the project and {job} / {alert} for its ids, JSON body)
_PROJECT_ROUTES = [
    ("GET", "/projects/{p}/jobs", None),
    ("POST", "/projects/{p}/jobs", {"command": ["true"]}),
    ("GET", "/projects/{p}/jobs/{job}", None),
    ("POST", "/projects/{p}/jobs/{job}/cancel", None),
    ("GET", "/projects/{p}/jobs/{job}/logs", None),
    ("GET", "/projects/{p}/lineage/run/r1", None),
    (
        "POST",
        "/projects/{p}/lineage",
        {
            "src": {"kind": "blob", "id": "b"},
            "relation": "input_of",
            "dst": {"kind": "run", "id": "r"},
        },
    ),
    ("GET", "/usage?project={p}", None),
    ("GET", "/projects/{p}/quotas", None),
    ("GET", "/projects/{p}/budget", None),
    ("PUT", "/projects/{p}/budget", {"gpu_hours_per_month": 1000}),
    ("GET", "/alerts?project={p}", None),
]


@pytest.fixture
def hidden(server, people) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """A job and an alert of project ``vision``, which bob (finance only) may not see."""
    from underlay.compute.alerts import record_alert
    from underlay.compute.models import Job
    from underlay.store.models import Project

    with server.platform.db.session(Scope.everything()) as s:
        vision = s.scalars(select(Project).where(Project.name == "vision")).one()
        job = Job(project_id=vision.id, command='["true"]', state="succeeded")  # never run
        s.add(job)
        s.flush()
        alert, _ = record_alert(s, "idle_gpu", "held idle", vision.id, job.id, "n/gpu0")
        return {"job": job.id, "alert": alert.id}


def _as_bob(server, admin, method: str, path: str, body: object) -> httpx.Response:  # type: ignore[no-untyped-def]
    token = admin.create_token("probe", user="bob").token
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.request(
        method, f"{server.url}/api/v1{path}", json=body, headers=headers, timeout=30
    )


@pytest.mark.parametrize(("method", "path", "body"), _PROJECT_ROUTES)
def test_another_projects_resources_are_404_like_a_missing_project(  # type: ignore[no-untyped-def]
    server, admin, hidden, method, path, body
) -> None:
    seen = _as_bob(server, admin, method, path.format(p="vision", **hidden), body)
    missing = _as_bob(server, admin, method, path.format(p="nothing", **hidden), body)
    assert (seen.status_code, missing.status_code) == (404, 404), seen.text
    assert seen.headers["content-type"] == "application/problem+json"
    assert seen.json()["type"] == missing.json()["type"] == "urn:underlay:problem:not-found"
    assert seen.json()["detail"] == "project 'vision' not found"
    assert missing.json()["detail"] == "project 'nothing' not found"
    _same_answer(seen, missing)


def test_setting_another_projects_quota_is_refused_like_any_project(server, admin, hidden) -> None:  # type: ignore[no-untyped-def]
    """Quotas are set by global admins only: the refusal says so before looking the project
    up, for a hidden project exactly as for a missing one."""
    body = {"guaranteed": 8}
    seen = _as_bob(server, admin, "PUT", "/projects/vision/quotas/A100", body)
    missing = _as_bob(server, admin, "PUT", "/projects/nothing/quotas/A100", body)
    assert (seen.status_code, missing.status_code) == (403, 403), seen.text
    detail = "bob is not a global admin; only a global admin may administer this"
    assert seen.json()["detail"] == detail
    _same_answer(seen, missing)
    assert admin.list_quotas("vision") == []


def _same_answer(seen: httpx.Response, missing: httpx.Response) -> None:
    hidden_body, missing_body = seen.json(), missing.json()
    for body_ in (hidden_body, missing_body):
        del body_["request_id"]
    # the same answer word for word, but for the name the caller asked for
    assert json.dumps(hidden_body).replace("vision", "nothing") == json.dumps(missing_body)


def test_another_projects_alert_is_404_like_a_missing_one(server, admin, hidden) -> None:  # type: ignore[no-untyped-def]
    seen = _as_bob(server, admin, "POST", f"/alerts/{hidden['alert']}/resolve", None)
    missing = _as_bob(server, admin, "POST", "/alerts/999999/resolve", None)
    assert (seen.status_code, missing.status_code) == (404, 404), seen.text
    assert seen.json()["detail"] == f"alert {hidden['alert']} does not exist"
    assert missing.json()["detail"] == "alert 999999 does not exist"
    assert [a.id for a in admin.list_alerts(project="vision")] == [hidden["alert"]]


def test_another_projects_job_by_global_id_is_404_like_a_missing_one(  # type: ignore[no-untyped-def]
    server, admin, people, hidden
) -> None:
    """``GET /jobs/{id}`` needs no project, and never tells an outsider that the id is taken."""
    seen = _as_bob(server, admin, "GET", f"/jobs/{hidden['job']}", None)
    missing = _as_bob(server, admin, "GET", "/jobs/999999", None)
    assert (seen.status_code, missing.status_code) == (404, 404), seen.text
    assert seen.headers["content-type"] == "application/problem+json"
    assert seen.json()["detail"] == f"job {hidden['job']} not found"
    _same_answer_but_id(seen, missing, hidden["job"])
    job = people["alice"].read_job_by_id(hidden["job"])  # a member of vision sees it
    assert (job.id, job.project) == (hidden["job"], "vision")
    with pytest.raises(NotFound, match=f"job {hidden['job']} not found"):
        people["bob"].read_job_by_id(hidden["job"])


def _same_answer_but_id(seen: httpx.Response, missing: httpx.Response, job_id: int) -> None:
    hidden_body, missing_body = seen.json(), missing.json()
    for body_ in (hidden_body, missing_body):
        del body_["request_id"]
    text = json.dumps(hidden_body)
    for before, after in ((f"job {job_id} ", "job 999999 "), (f"/jobs/{job_id}", "/jobs/999999")):
        text = text.replace(before, after)
    assert text == json.dumps(missing_body)


def _cordon_every_node(admin: Client) -> None:
    """Wait for the built-in agent's node, then cordon it."""
    import time

    deadline = time.monotonic() + 30
    while not admin.list_nodes() and time.monotonic() < deadline:
        time.sleep(0.1)
    for node in admin.list_nodes():
        admin.cordon(node.name)


def _queued_job_of(server, user: str, project: str = "vision") -> int:  # type: ignore[no-untyped-def]
    from underlay.compute.models import Job
    from underlay.store.models import Project, User

    with server.platform.db.session(Scope.everything()) as s:
        found = s.scalars(select(Project).where(Project.name == project)).one()
        owner = s.scalars(select(User).where(User.name == user)).one()
        job = Job(project_id=found.id, user_id=owner.id, command='["true"]', cpu_milli=100)
        s.add(job)
        s.flush()
        return job.id


def test_only_a_jobs_owner_or_an_admin_may_cancel_it(server, admin, people) -> None:  # type: ignore[no-untyped-def]
    """Slurm's rule: another member of the project gets 403; a non-member 404 as always."""
    admin.create_user("carol")
    admin.add_member("vision", "carol", "member")
    admin.create_user("vera")
    admin.add_member("vision", "vera", "admin")
    _cordon_every_node(admin)  # so the live scheduler leaves the jobs queued
    job_id = _queued_job_of(server, "alice")
    refused = pytest.raises(PermissionDenied, match=rf"^carol does not own job {job_id}; only")
    with server.client(admin.create_token("t", user="carol").token) as carol, refused:
        carol.cancel_job("vision", job_id)
    with pytest.raises(PermissionDenied, match="victor is a viewer of project 'vision'"):
        people["victor"].cancel_job("vision", job_id)
    with pytest.raises(NotFound, match="project 'vision' not found"):
        people["bob"].cancel_job("vision", job_id)
    assert admin.read_job("vision", job_id).state == "queued"
    assert people["alice"].cancel_job("vision", job_id).reason == "cancelled by alice"
    other = _queued_job_of(server, "alice")
    with server.client(admin.create_token("t", user="vera").token) as vera:
        assert vera.cancel_job("vision", other).reason == "cancelled by vera"
    third = _queued_job_of(server, "alice")
    assert admin.cancel_job("vision", third).state == "cancelled"

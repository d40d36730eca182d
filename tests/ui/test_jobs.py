"""The jobs pages over HTTP: list and filters, submit and cancel through forms, RBAC,
escaping, 404 for another project's job, and the log that follows a running job."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from tests.ui.conftest import OTHER_PROJECT, PROJECT, Browser, Site, python
from underlay.compute.models import Job
from underlay.store import Scope
from underlay.store.models import AuditEntry, Project


def submit(client: Browser, command: str, **fields: str) -> int:
    client.get("/jobs")
    response = client.post("/jobs", {"project": PROJECT, "command": command, **fields})
    assert response.status_code == 303, response.text
    found = re.fullmatch(r"/jobs/(\d+)", response.headers["location"])
    assert found is not None
    return int(found.group(1))


def state_of(site: Site, job_id: int) -> tuple[str, str]:
    with site.live.platform.db.session(Scope.everything()) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state, job.reason


def wait_state(site: Site, job_id: int, *states: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := state_of(site, job_id))[0] not in states:
        assert time.monotonic() < deadline, f"job {job_id} stayed {state}"
        time.sleep(0.1)
    return state[0]


def test_a_member_submits_a_job_and_sees_it_listed(site: Site) -> None:
    max_ = site.signed_in("max")
    job_id = submit(max_, python("print('hello from the form')"), name="form-job")
    page = max_.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "form-job" in page.text
    listed = max_.get("/jobs", params={"name": "form-job"})
    assert f'href="/jobs/{job_id}"' in listed.text
    wait_state(site, job_id, "succeeded")
    assert "hello from the form" in max_.get(f"/jobs/{job_id}").text


def test_html_in_a_job_name_and_its_log_shows_as_text(site: Site) -> None:
    max_ = site.signed_in("max")
    evil = "<script>alert(1)</script>"
    job_id = submit(max_, python(f"print({evil!r})"), name=evil)
    wait_state(site, job_id, "succeeded")
    for page in (max_.get(f"/jobs/{job_id}"), max_.get("/jobs")):
        assert evil not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    raw = max_.get(f"/jobs/{job_id}/log")
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["x-content-type-options"] == "nosniff"


def test_a_viewer_sees_no_write_controls_and_a_forged_post_is_refused_and_audited(
    site: Site,
) -> None:
    max_ = site.signed_in("max")
    job_id = submit(max_, python("import time; time.sleep(120)"), name="long")
    vera = site.signed_in("vera")
    listing = vera.get("/jobs")
    assert listing.status_code == 200
    assert "Submit a job" not in listing.text
    assert "Cancel job" not in vera.get(f"/jobs/{job_id}").text
    forged = vera.post("/jobs", {"project": PROJECT, "command": "true"})
    assert forged.status_code == 403
    assert "vera is a viewer" in forged.text
    cancel = vera.post(f"/jobs/{job_id}/cancel", {})
    assert cancel.status_code == 403
    with site.live.platform.db.session(Scope.everything()) as s:
        denied = s.scalars(
            select(AuditEntry.action).where(
                AuditEntry.actor == "vera", AuditEntry.outcome == "denied"
            )
        ).all()
    assert {"job.submit", "job.cancel"} <= set(denied)
    assert max_.post(f"/jobs/{job_id}/cancel", {}).status_code == 303
    assert wait_state(site, job_id, "cancelled") == "cancelled"


def test_another_projects_job_is_404(site: Site) -> None:
    with site.admin() as admin:
        theirs = admin.submit_job(OTHER_PROJECT, ["true"], name="not-yours")
    max_ = site.signed_in("max")
    assert max_.get(f"/jobs/{theirs.id}").status_code == 404
    assert max_.get(f"/jobs/{theirs.id}/log").status_code == 404
    assert max_.post(f"/jobs/{theirs.id}/cancel", {}).status_code == 404
    assert "not-yours" not in max_.get("/jobs").text
    assert max_.get("/jobs", params={"project": OTHER_PROJECT}).status_code == 404
    assert max_.get("/jobs/999999").status_code == 404
    ada = site.signed_in("ada")  # a global admin sees every project
    assert "not-yours" in ada.get(f"/jobs/{theirs.id}").text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": ""}, "command: give the program"),
        ({"command": "echo 'unbalanced"}, "command: No closing quotation"),
        ({"command": "true", "cpus": "lots"}, "cpus: &#39;lots&#39; is not a number"),
        ({"command": "true", "gpus": "-1"}, "gpus: Input should be greater than or equal to 0"),
        ({"command": "true", "priority": "urgent"}, "priority: Input should be"),
        ({"command": "true", "cpus": "nan"}, "cpus: &#39;nan&#39; is not a finite number"),
    ],
)
def test_bad_submissions_come_back_with_the_reason(
    site: Site, fields: dict[str, str], message: str
) -> None:
    max_ = site.signed_in("max")
    max_.get("/jobs")
    response = max_.post("/jobs", {"project": PROJECT, **fields})
    assert response.status_code == 400
    assert message in response.text
    assert 'name="command"' in response.text  # the form again, to correct


@pytest.mark.parametrize(
    ("params", "status"),
    [({"state": "bogus"}, 400), ({"page": "0"}, 400), ({"page": "x"}, 400), ({"name": "%"}, 200)],
)
def test_bad_filters_are_a_4xx_page(site: Site, params: dict[str, str], status: int) -> None:
    max_ = site.signed_in("max")
    response = max_.get("/jobs", params=params)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")


def test_the_list_pages_by_fifty(site: Site) -> None:
    with site.live.platform.db.session(Scope.everything()) as s:
        project = s.scalar(select(Project).where(Project.name == PROJECT))
        assert project is not None
        for i in range(120):
            s.add(Job(project_id=project.id, name=f"bulk-{i:03d}", command='["true"]',
                      state="succeeded"))  # fmt: skip
    max_ = site.signed_in("max")
    first = max_.get("/jobs", params={"name": "bulk-"})
    assert first.text.count(">bulk-") == 50
    assert "Showing 1 to 50 of 120" in first.text
    assert 'href="/jobs?name=bulk-&amp;page=2"' in first.text
    last = max_.get("/jobs", params={"name": "bulk-", "page": "3"})
    assert last.text.count(">bulk-") == 20
    assert ">bulk-000<" in last.text
    done = max_.get("/jobs", params={"state": "succeeded", "project": PROJECT})
    assert done.status_code == 200


def test_the_log_follows_a_running_job_until_it_ends(site: Site) -> None:
    max_ = site.signed_in("max")
    body = """
        import time
        for i in range(3):
            print(f"step {i}", flush=True)
            time.sleep(0.5)
    """
    job_id = submit(max_, python(body))
    text, offset, deadline = "", 0, time.monotonic() + 60
    while True:
        chunk = max_.get(f"/jobs/{job_id}/log", params={"offset": offset})
        assert chunk.status_code == 200
        text += chunk.text
        offset = int(chunk.headers["x-log-offset"])
        if chunk.headers["x-log-done"] == "1":
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [f"step {i}" in text for i in range(3)] == [True] * 3
    assert offset == len(text.encode())

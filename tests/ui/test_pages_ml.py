"""The runs, models, datasets, deployments and simulate pages over HTTP: what each shows,
404 for another project's objects, escaping, and that a viewer gets no write controls (and a
forged post is refused and audited)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui.conftest import Browser, Site
from tests.ui.ml_world import PROJECT, World, world

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[World]:
    yield from world(tmp_path_factory.mktemp("ui-pages"), sqlite_template)


@pytest.fixture(scope="module")
def site(seeded: World) -> Iterator[Site]:
    found = Site(seeded.server)
    yield found
    for client in found.clients:
        client.close()


def _ok(client: Browser, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.text[:500])
    assert "<script>alert" not in response.text
    return response.text


def test_pages_need_a_session(site: Site) -> None:
    anonymous = site.anonymous()
    for path in ("/runs", "/models", "/datasets", "/deployments", "/simulate"):
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")


def test_runs_list_search_run_and_compare(site: Site, seeded: World) -> None:
    viewer = site.signed_in("viewer")
    listing = _ok(viewer, "/runs")
    assert "trial-0" in listing and "trial-2" in listing and ESCAPED in listing
    assert 'role="img"' in listing  # the latest-metric chart
    searched = _ok(viewer, "/runs?project=ml&q=params.lr+%3D+%270.01%27&order=metrics.loss")
    assert "trial-1" in searched and "trial-0" not in searched
    bad = viewer.get("/runs?project=ml&q=bogus+%3D+1")
    assert bad.status_code == 400 and "bogus" in bad.text
    assert viewer.get("/runs?project=ml&order=metrics.loss+sideways").status_code == 400
    assert viewer.get("/runs?project=ml&page=0").status_code == 400
    run = _ok(viewer, f"/runs/ml/{seeded.runs[2]}")
    assert ESCAPED in run and run.count('role="img"') == 2  # loss and acc curves
    a, b = seeded.runs[:2]
    both = _ok(viewer, f"/runs/compare?project=ml&ids={a}&ids={b}")
    assert "trial-0" in both and "trial-1" in both and "param lr" in both
    assert both.count("<polyline") >= 4  # two metrics, a line per run
    one = viewer.get(f"/runs/compare?project=ml&ids={a}")
    assert one.status_code == 400 and "2 to 20" in one.text
    assert viewer.get("/runs/compare?project=ml&ids=1;drop").status_code == 400


def test_another_projects_objects_answer_404(site: Site, seeded: World) -> None:
    viewer, outsider = site.signed_in("viewer"), site.signed_in("outsider")
    for path in (
        f"/runs/ml/{seeded.other_run}",
        f"/runs/other/{seeded.other_run}",
        f"/runs/compare?project=ml&ids={seeded.runs[0]}&ids={seeded.other_run}",
        "/datasets/ml/tables/secrets",
        "/datasets/other/tables/secrets",
        "/runs?project=other",
    ):
        assert viewer.get(path).status_code == 404, path
    for path in (
        f"/runs/ml/{seeded.runs[0]}",
        "/models/ml/churn",
        "/datasets/ml/images",
        "/datasets/ml/tables/customers",
        "/deployments/ml/churn-api",
        "/models?project=ml",
        "/deployments?project=ml",
    ):
        response = outsider.get(path)
        assert response.status_code == 404, path
        assert "trial-" not in response.text and "churn" not in response.text.split("<main", 1)[1]


def test_model_page_versions_aliases_lineage_and_card(site: Site) -> None:
    viewer = site.signed_in("viewer")
    listing = _ok(viewer, "/models")
    assert "churn" in listing and "champion → v2" in listing
    page = _ok(viewer, "/models/ml/churn")
    assert "retrained" in page and "first good one" in page  # the alias history
    assert ESCAPED in page  # the description, in the header and the card
    assert 'class="ul-chart ul-graph"' in page and "model_version:churn@2" in page
    assert "sklearn" in page and 'state-ok">ok' in page  # flavor, signed
    older = _ok(viewer, "/models/ml/churn?version=1")
    assert "Lineage of v1" in older
    assert viewer.get("/models/ml/churn?version=..%2F").status_code == 400
    assert viewer.get("/models/ml/nope").status_code == 404


def test_viewer_gets_no_write_controls_and_a_forged_post_is_refused(
    site: Site, seeded: World
) -> None:
    viewer, maker = site.signed_in("viewer"), site.signed_in("maker")
    assert "Move alias" not in _ok(viewer, "/models/ml/churn")
    assert "Move alias" in _ok(maker, "/models/ml/churn")
    forged = {"alias": "champion", "version": "1", "reason": "forged"}
    assert viewer.post("/models/ml/churn/aliases", forged).status_code == 403
    assert maker.post("/models/ml/churn/aliases", forged, csrf=False).status_code == 403
    with site.admin() as admin:
        denied = admin.list_audit(action="model.alias.set", outcome="denied")
        assert any(e.actor == "viewer" for e in denied)
        assert admin.list_models(PROJECT)[0].aliases == {"champion": 2}
    moved = maker.post("/models/ml/churn/aliases", {**forged, "reason": "roll back"})
    assert moved.status_code == 303
    page = _ok(maker, "/models/ml/churn")
    assert "roll back" in page and "champion → v1" in page
    bad = maker.post("/models/ml/churn/aliases", {**forged, "reason": ""})
    assert bad.status_code == 400


def test_datasets_tables_and_the_sql_box(site: Site) -> None:
    viewer = site.signed_in("viewer")
    listing = _ok(viewer, "/datasets")
    assert "images" in listing and "customers" in listing and "secrets" not in listing
    assert "first images" in _ok(viewer, "/datasets/ml/images")
    table = _ok(viewer, "/datasets/ml/tables/customers")
    assert ESCAPED in table  # the odd column name, as text
    assert "not_null:id" in table and "all 3 rows pass" in table  # the quality report
    assert "email (100%)" in table and "tokenize" in table  # the PII finding and its policy
    answer = viewer.post(
        "/datasets/ml/tables/customers/sql", {"query": "SELECT email FROM customers"}
    )
    assert answer.status_code == 200 and "3 row(s)" in answer.text
    assert "ann@example.com" not in answer.text  # masked on ingest
    every = viewer.post("/datasets/ml/tables/customers/sql", {"query": "SELECT * FROM customers"})
    assert every.status_code == 200 and f'<th scope="col">{ESCAPED}</th>' in every.text
    many = viewer.post(
        "/datasets/ml/tables/customers/sql",
        {"query": "SELECT c.id, r.i FROM customers c, range(300) r(i)"},
    )
    assert "200 row(s), the first 200 only" in many.text
    with site.admin() as admin:
        assert any(e.actor == "viewer" for e in admin.list_audit(action="table.sql"))
    refused = viewer.post("/datasets/ml/tables/customers/sql", {"query": "DELETE FROM customers"})
    assert refused.status_code == 400 and "SELECT" in refused.text
    elsewhere = viewer.post("/datasets/ml/tables/customers/sql", {"query": "SELECT * FROM secrets"})
    assert elsewhere.status_code == 404 and "top-secret-value" not in elsewhere.text
    no_csrf = viewer.post("/datasets/ml/tables/customers/sql", {"query": "SELECT 1"}, csrf=False)
    assert no_csrf.status_code == 403


def test_deployment_page_shows_traffic_canary_and_drift(site: Site) -> None:
    viewer = site.signed_in("viewer")
    assert "churn-api" in _ok(viewer, "/deployments")
    page = _ok(viewer, "/deployments/ml/churn-api")
    for text in ("traffic split", "stable v1", "canary v2", "Canary v2", "x1 (drifted)"):
        assert text in page, text
    assert "drift score over time" in page
    assert "x1: reference and current distribution" in page and ESCAPED in page  # a bin label


def test_simulate_page_charts_policies_side_by_side(site: Site) -> None:
    viewer = site.signed_in("viewer")
    assert "Run replay" in _ok(viewer, "/simulate")
    page = _ok(viewer, "/simulate?trace=philly&cluster=2x8xP100&jobs=40&policies=fifo&policies=las")
    assert "jobs ended over simulated time" in page and page.count("<polyline") == 2
    assert ">fifo</th>" in page and ">las</th>" in page
    bad = viewer.get("/simulate?trace=philly&cluster=%2Fetc%2Fpasswd")
    assert bad.status_code == 400 and "cluster must be" in bad.text
    assert viewer.get("/simulate?trace=philly&jobs=100000").status_code == 400


def test_a_user_in_no_project_is_told_so(site: Site) -> None:
    loner = site.signed_in("loner")
    for path in ("/runs", "/models", "/datasets", "/deployments"):
        assert "You belong to no project yet" in _ok(loner, path), path
    assert loner.get("/runs/compare?ids=1&ids=2").status_code == 400


def test_canary_controls_for_members_only(site: Site) -> None:
    """Last in this module: it ends the seeded canary."""
    viewer, maker = site.signed_in("viewer"), site.signed_in("maker")
    assert "Roll back canary" not in _ok(viewer, "/deployments/ml/churn-api")
    assert "Roll back canary" in _ok(maker, "/deployments/ml/churn-api")
    path = "/deployments/ml/churn-api/canary/rollback"
    assert viewer.post(path, {"reason": "forged"}).status_code == 403
    assert maker.post(path, {"reason": "x"}, csrf=False).status_code == 403
    assert maker.post("/deployments/ml/churn-api/canary/explode", {}).status_code == 404
    assert maker.post(path, {"reason": "a\\nb".replace("\\n", "\n")}).status_code == 400
    with site.admin() as admin:
        canary = admin.read_deployment(PROJECT, "churn-api").canary
        assert canary is not None and canary.state == "starting"
        denied = admin.list_audit(action="deployment.rollback", outcome="denied")
        assert [e.actor for e in denied] == ["viewer"]
    done = maker.post(path, {"reason": "too slow"})
    assert done.status_code == 303
    with site.admin() as admin:
        canary = admin.read_deployment(PROJECT, "churn-api").canary
        assert canary is not None and canary.state == "rolled_back"
        (entry,) = admin.list_audit(action="deployment.rollback", outcome="ok")
        assert entry.actor == "maker" and "too slow" in str(entry.detail)
    after = _ok(maker, "/deployments/ml/churn-api")
    assert "the last one, v2, was rolled back" in after and "Roll back canary" not in after
    with site.admin() as admin:
        admin.start_canary(PROJECT, "churn-api", "churn@2", weight=0.3)
    promoted = maker.post("/deployments/ml/churn-api/canary/promote", {"reason": "good"})
    assert promoted.status_code == 303
    with site.admin() as admin:
        canary = admin.read_deployment(PROJECT, "churn-api").canary
        assert canary is not None and canary.state == "promoted"

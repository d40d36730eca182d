"""Server time per dashboard page with 10,000 jobs and 1,000 runs (issue 16: no page over 1 s).

Seeds a fresh SQLite home: two projects, 10,000 jobs (2,000 queued with a reason, 100
running, the rest finished) with a billed attempt each spread over 30 days, 300 alerts and
1,000 runs (with params, through the tracking service), and serves the real app with
uvicorn on 127.0.0.1 in a thread (times include one loopback round trip, well under a
millisecond). Each page is fetched ``--repeat`` times as a project member (the
tenant-scoped queries) after one warm-up; the median, p95 and worst times are printed.
The baseline, measured in the same run, is the API's own list of 50 jobs as JSON
(``GET /api/v1/projects/{p}/jobs?limit=50``): the ratio says what a page costs over the
data behind it.

    python benchmarks/ui.py [--jobs 10000] [--runs 1000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import insert, select

from underlay import identity
from underlay.compute.models import Alert, Job, JobAttempt
from underlay.config import Settings
from underlay.ml import runs as ml_runs
from underlay.ml.schemas import RunCreate
from underlay.platform import Platform
from underlay.store import Scope
from underlay.store.models import Project, Role

PROJECTS = ("vision", "speech")
TOKEN = "ul_bench_" + "0" * 40
PASSWORD = "benchmark passphrase"


def seed(platform: Platform, jobs: int, runs: int) -> None:
    now = dt.datetime.now(dt.UTC)
    with platform.db.session(Scope.everything()) as s:
        ids = [identity.create_project(s, name, identity.SYSTEM).id for name in PROJECTS]
        mia = identity.create_user(s, "mia", password=PASSWORD)
        for pid in ids:
            project = s.get(Project, pid)
            assert project is not None
            identity.add_member(s, project, "mia", Role.member)
        rows = []
        for i in range(jobs):
            state = "queued" if i % 5 == 0 else "running" if i % 100 == 1 else "succeeded"
            rows.append(
                {
                    "project_id": ids[i % 2],
                    "user_id": mia.id,
                    "name": f"train-{i}",
                    "command": '["python", "train.py"]',
                    "state": state,
                    "gpus": i % 3,
                    "reason": "waiting: 2 A100 needed, 0 free (fair share)"
                    if state == "queued"
                    else "",
                    "submitted_at": now - dt.timedelta(minutes=jobs - i),
                    "queued_at": now - dt.timedelta(minutes=jobs - i),
                }
            )
        s.execute(insert(Job), rows)
        job_ids = list(s.scalars(select(Job.id).order_by(Job.id)))
        attempts = []
        for n, job_id in enumerate(job_ids):
            ended = now - dt.timedelta(minutes=(n * 4) % (30 * 24 * 60))
            attempts.append(
                {
                    "job_id": job_id,
                    "project_id": ids[n % 2],
                    "user_id": mia.id,
                    "number": 1,
                    "node": "node-1",
                    "placement": "{}",
                    "state": "succeeded",
                    "admitted_at": ended - dt.timedelta(minutes=10),
                    "ended_at": ended,
                    "wall_s": 600.0,
                    "gpu_s": 600.0 * (n % 3),
                    "energy_kwh": 0.05,
                    "cost": 0.4,
                    "carbon_g": 20.0,
                    "billed": True,
                }
            )
        s.execute(insert(JobAttempt), attempts)
        s.execute(
            insert(Alert),
            [
                {"kind": "idle-gpu", "project_id": ids[i % 2], "subject": f"gpu-{i}",
                 "message": f"job {i} holds an idle GPU", "severity": "warning", "details": "{}"}
                for i in range(300)
            ],
        )  # fmt: skip
    with platform.db.session(Scope.everything()) as s:
        project = s.get(Project, ids[0])
        assert project is not None
        for i in range(runs):
            body = RunCreate(experiment="sweep", name=f"run-{i}", params={"lr": str(i / 1000)})
            ml_runs.create_run(s, project, body, mia.id)


def sign_in(client, user: str) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = client.post(
        "/login", data={"csrf": csrf.group(1), "user": user, "password": PASSWORD, "next": "/"}
    )
    assert answer.status_code == 303, answer.text


def timed(client, path: str, repeat: int, **kw) -> list[float]:  # type: ignore[no-untyped-def]
    answer = client.get(path, **kw)  # warm-up (and a check)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path, **kw)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    repeat = args.repeat
    home = Path(tempfile.mkdtemp(prefix="underlay-bench-ui-"))
    settings = Settings(home=home, admin_token=TOKEN)
    settings.compute.local_agent = False
    platform = Platform(settings)
    platform.start()
    started = time.perf_counter()
    seed(platform, args.jobs, args.runs)
    print(f"seeded {args.jobs:,} jobs (+ attempts), 300 alerts, {args.runs:,} runs "
          f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
    with serving(platform) as url:
        measure(platform, url, repeat)
    platform.close()
    shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def serving(platform: Platform) -> Iterator[str]:
    import uvicorn

    from underlay.api.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    platform.settings.server.port = port
    config = uvicorn.Config(
        create_app(platform, start=False), host="127.0.0.1", port=port, log_config=None,
        access_log=False, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def measure(platform: Platform, url: str, repeat: int) -> None:
    client = httpx.Client(base_url=url, follow_redirects=False, timeout=60)
    sign_in(client, "mia")
    with platform.db.session(Scope.everything()) as s:
        some_job = s.scalar(select(Job.id).order_by(Job.id.desc()))
        some_run = s.scalar(select(ml_runs.Run.id).order_by(ml_runs.Run.id.desc()))
    pages = {
        "/": "/",
        "/nodes": "/nodes",
        "/jobs": "/jobs",
        "/jobs (page 100)": "/jobs?page=100",
        "/jobs?state=queued": "/jobs?state=queued",
        "/jobs/{id}": f"/jobs/{some_job}",
        "/projects/vision": "/projects/vision",
        "/alerts": "/alerts",
        "/runs": "/runs?project=vision",
        "/runs (page 10)": "/runs?project=vision&page=10",
        "/runs/{project}/{id}": f"/runs/vision/{some_run}",
    }
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    baseline = statistics.median(
        timed(api, "/api/v1/projects/vision/jobs", repeat, params={"limit": 50})
    )
    results = {}
    print(f"\n{'page':<24}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}{'x API list':>12}")
    for label, path in pages.items():
        times = sorted(timed(client, path, repeat))
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        median = statistics.median(times)
        results[label] = {
            "median_ms": median * 1000,
            "p95_ms": p95 * 1000,
            "max_ms": times[-1] * 1000,
        }
        print(f"{label:<24}{median * 1000:>11.1f}{p95 * 1000:>9.1f}{times[-1] * 1000:>9.1f}"
              f"{median / baseline:>12.2f}")  # fmt: skip
    print(f"{'API: 50 jobs as JSON':<24}{baseline * 1000:>11.1f}")
    worst = max(r["max_ms"] for r in results.values())
    print(f"\nslowest page load: {worst:.0f} ms (target: under 1000 ms)")
    print(json.dumps({"baseline_ms": baseline * 1000, "pages": results}))


if __name__ == "__main__":
    sys.exit(main())

"""``underlay status`` against a live server and with the server down."""

from __future__ import annotations

import json
import time
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from sqlalchemy import select

from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer
from underlay.store import Scope

DEAD_URL = "http://127.0.0.1:9"  # discard port: nothing listens


def _status(tmp_path: Path, url: str, token: str, *args: str) -> CompletedProcess[str]:
    env = clean_env(UNDERLAY_URL=url, UNDERLAY_TOKEN=token, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    result = run_cli("status", *args, env=env)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def _cordon_every_node(admin: Any) -> None:
    """Wait for the built-in agent's node, then cordon it: jobs stay queued."""
    deadline = time.monotonic() + 30
    while not admin.list_nodes() and time.monotonic() < deadline:
        time.sleep(0.1)
    for node in admin.list_nodes():
        admin.cordon(node.name)


def _queued(server: LiveServer, project: str) -> None:
    from underlay.compute.models import Job
    from underlay.store.models import Project

    with server.platform.db.session(Scope.everything()) as s:
        found = s.scalars(select(Project).where(Project.name == project)).one()
        s.add(Job(project_id=found.id, command='["true"]', cpu_milli=100))


def test_status_shows_server_facts_without_secrets_and_only_the_callers_queue(
    tmp_path: Path, server: LiveServer
) -> None:
    with server.client() as admin:
        admin.create_project("vision")
        admin.create_project("finance")
        admin.create_user("alice")
        admin.add_member("vision", "alice", "member")
        alice = admin.create_token("t", user="alice").token
        _cordon_every_node(admin)
    _queued(server, "vision")
    _queued(server, "finance")
    result = _status(tmp_path, server.url, alice, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    backend = server.settings.database_url.split(":")[0].split("+")[0]
    assert report["reachable"] is True and report["user"] == "alice"
    assert (report["database"], report["blob_store"]) == (backend, "local")
    assert report["queue"]["queued"] == 1  # vision's; finance is not hers
    assert report["token"] == "environment UNDERLAY_TOKEN"
    assert all({"name", "status", "isolation"} <= set(n) for n in report["nodes"])
    for secret in (alice, server.settings.database_url, str(server.settings.home)):
        assert secret not in result.stdout
    everything = json.loads(_status(tmp_path, server.url, server.admin_token, "--json").stdout)
    assert everything["queue"]["queued"] == 2
    table = _status(tmp_path, server.url, alice).stdout
    assert f"server:     {server.url} (underlay " in table
    assert f"database:   {backend}" in table
    assert "queue:      queued 1" in table


def test_status_with_the_server_down_prints_the_profile_and_exits_1(tmp_path: Path) -> None:
    result = _status(tmp_path, DEAD_URL, "ul_whatever")
    assert result.returncode == 1
    assert result.stdout.startswith(f"server:     {DEAD_URL} (unreachable: cannot reach")
    assert "profile:    default (user ?, project -)" in result.stdout
    report = json.loads(_status(tmp_path, DEAD_URL, "ul_whatever", "--json").stdout)
    assert report["reachable"] is False and report["url"] == DEAD_URL


def test_status_waits_for_a_server_that_is_starting(tmp_path: Path) -> None:
    """``status --wait`` (the README tour runs it right after ``underlay up &``) waits for
    the server, and with no token yet says it is up and that nobody is logged in."""
    import subprocess

    from tests.cli.conftest import CLI, ServerProcess
    from tests.conftest import free_port

    port = free_port()
    env = clean_env(UNDERLAY_URL=f"http://127.0.0.1:{port}", XDG_CONFIG_HOME=str(tmp_path / "x"))
    waiting = subprocess.Popen(
        [*CLI, "status", "--wait", "60"], env=env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(1)  # it is polling a port nobody listens on yet
    assert waiting.poll() is None
    server = ServerProcess(tmp_path / "home", port=port).start()
    try:
        out, _ = waiting.communicate(timeout=60)
    finally:
        server.stop()
    assert waiting.returncode == 0, out
    assert out.splitlines() == [
        f"server:     http://127.0.0.1:{port} (up)",
        "profile:    default (user - (not logged in: underlay login))",
    ]
    gone = _status(tmp_path, f"http://127.0.0.1:{port}", "", "--wait", "0.5")
    assert gone.returncode == 1  # nothing answers within the wait
    assert "(unreachable: cannot reach the server" in gone.stdout

"""The first admin token on a real ``underlay up``: written to a 0600 file, recoverable with
``underlay admin reset-token`` on the server's machine, and not buried under heartbeat logs.

One server process on a fresh home (no ``UNDERLAY_ADMIN_TOKEN``, so a token is generated),
with a fast heartbeat so the routine traffic the log must not show happens many times.
"""

from __future__ import annotations

import getpass
import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import ServerProcess, clean_env, run_cli
from underlay.client import Client
from underlay.errors import Unauthenticated

UNKNOWN = "UNDERLAY_DATABASE_URL"


class FreshServer(ServerProcess):
    def extra_env(self) -> dict[str, str]:
        return {
            "UNDERLAY_COMPUTE__NODE_NAME": "node-1",
            "UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S": "0.05",
            UNKNOWN: "postgresql+psycopg://nobody@nowhere/x",  # a misspelt setting
        }


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[FreshServer]:
    with FreshServer(tmp_path / "home", admin_token=None) as server:
        yield server  # type: ignore[misc]


def first_token(server: ServerProcess) -> str:
    match = re.search(r"created user 'admin' with token (ul_\S+)", server.output())
    assert match, server.output()
    return match.group(1)


def test_the_first_admin_token_is_also_in_a_private_file(fresh: FreshServer) -> None:
    secret = first_token(fresh)
    path = fresh.home / "admin.token"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in fresh.output()  # the start-up message says where it is
    assert "admin reset-token" in fresh.output()
    with Client(fresh.url, secret) as admin:
        assert admin.me().name == "admin"


def test_an_unknown_setting_is_warned_about_once_at_start_up(fresh: FreshServer) -> None:
    warnings = [line for line in fresh.output().splitlines() if UNKNOWN in line]
    assert warnings == [
        f"warning: {UNKNOWN} is not an underlay setting and is ignored; "
        "did you mean UNDERLAY_STORE__URL?"
    ]
    assert (fresh.home / "underlay.db").exists()  # it ran on SQLite, as the warning implies


def test_heartbeats_stay_out_of_the_info_log(fresh: FreshServer) -> None:
    with Client(fresh.url, first_token(fresh)) as admin:
        seen: set[object] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 10:  # ten distinct heartbeats reached the server
            assert time.monotonic() < deadline, "the built-in agent stopped heartbeating"
            seen |= {n.heartbeat_at for n in admin.list_nodes() if n.name == "node-1"}
            time.sleep(0.05)
    log = fresh.output()
    assert "method=GET path=/api/v1/nodes " in log  # the access log is on: our reads are in it
    assert "HTTP Request" not in log  # httpx's own line per request of the agent
    assert "path=/api/v1/nodes/node-1 " not in log  # the heartbeats' access lines


def test_reset_token_revokes_the_old_one_and_writes_the_new(fresh: FreshServer) -> None:
    old = first_token(fresh)
    env = clean_env(UNDERLAY_HOME=str(fresh.home))
    result = run_cli("admin", "reset-token", env=env)
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert new.startswith("ul_") and new != old and "\n" not in new
    assert "revoked" in result.stderr and new not in result.stderr
    path = fresh.home / "admin.token"
    assert path.read_text().strip() == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Client(fresh.url, old) as stale, pytest.raises(Unauthenticated, match="revoked"):
        stale.me()
    with Client(fresh.url, new) as admin:
        assert admin.me().name == "admin"
        (entry,) = admin.list_audit(action="token.reset")
    assert entry.actor == f"local:{getpass.getuser()}" and entry.resource == "user:admin"

    missing = run_cli("admin", "reset-token", "--user", "ghost", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: user 'ghost' not found"
    assert path.read_text().strip() == new  # a refused reset changes nothing


def test_reset_token_json_names_the_user_token_and_file(fresh: FreshServer) -> None:
    env = clean_env(UNDERLAY_HOME=str(fresh.home))
    result = run_cli("admin", "reset-token", "--json", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    path = fresh.home / "admin.token"
    assert shown == {"user": "admin", "token": path.read_text().strip(), "path": str(path)}
    with Client(fresh.url, shown["token"]) as admin:
        assert admin.me().name == "admin"

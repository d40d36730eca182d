"""``underlay audit verify --local`` as a child process on a store someone tampered with, and
``underlay audit ls`` paging newest first against a live server."""

from __future__ import annotations

import json
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from tests.audit.support import fill, rewind
from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer
from underlay.config import Settings
from underlay.platform import Platform
from underlay.store import Database


def test_verify_local_exits_non_zero_on_a_truncated_log(db: Database, settings: Settings) -> None:
    env = clean_env(
        UNDERLAY_HOME=str(settings.home),
        UNDERLAY_STORE__URL=settings.database_url,
        UNDERLAY_SECURITY__AUDIT_CHECKPOINT_EVERY="3",
    )
    platform = Platform(
        Settings(
            home=settings.home,
            store={"url": settings.database_url},
            security={"audit_checkpoint_every": 3},
        )
    )
    try:
        fill(platform.audit, 10)
    finally:
        platform.close()
    verified = run_cli("audit", "verify", "--local", env=env)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("audit log OK: 10 entries")

    rewind(db, 4)  # entries and checkpoints after 4 deleted, the head rewound
    failed = run_cli("audit", "verify", "--local", env=env)
    assert failed.returncode == 1, failed.stdout
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("audit log FAILED verification: the audit log ends at entry 4")
    assert "covers entry 9: entries after 4 were deleted" in lines[0]


def _ls(server: LiveServer, tmp_path: Path, *args: str) -> CompletedProcess[str]:
    env = clean_env(
        UNDERLAY_URL=server.url,
        UNDERLAY_TOKEN=server.admin_token,
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
    )
    env["COLUMNS"] = "200"
    result = run_cli("audit", "ls", "--action", "project.create", *args, env=env)
    assert "Traceback" not in result.stderr + result.stdout
    return result


def _page(server: LiveServer, tmp_path: Path, *args: str) -> dict[str, Any]:
    result = _ls(server, tmp_path, "--json", *args)
    assert result.returncode == 0, result.stderr
    page: dict[str, Any] = json.loads(result.stdout)
    return page


def _names(page: dict[str, Any]) -> list[str]:
    return [e["resource"].removeprefix("project:") for e in page["entries"]]


def test_audit_ls_pages_newest_first_with_cursors_and_times(
    server: LiveServer, tmp_path: Path
) -> None:
    with server.client() as admin:
        for i in range(1, 8):
            admin.create_project(f"p{i}")
    first = _page(server, tmp_path, "--limit", "3")
    assert _names(first) == ["p7", "p6", "p5"]
    assert first["next"] == {"before": first["entries"][-1]["seq"]}
    second = _page(server, tmp_path, "--limit", "3", "--before", str(first["next"]["before"]))
    assert _names(second) == ["p4", "p3", "p2"]
    last = _page(server, tmp_path, "--limit", "3", "--before", str(second["next"]["before"]))
    assert (_names(last), last["next"]) == (["p1"], None)
    p2 = second["entries"][-1]["seq"]
    forward = _page(server, tmp_path, "--limit", "2", "--after", str(p2))
    assert _names(forward) == ["p4", "p3"]
    assert forward["next"] == {"after": forward["entries"][0]["seq"]}

    assert len(_page(server, tmp_path, "--since", "1h")["entries"]) == 7
    assert _page(server, tmp_path, "--until", "1h")["entries"] == []
    assert _page(server, tmp_path, "--since", "2999-01-01")["entries"] == []
    assert len(_page(server, tmp_path, "--until", "2999-01-01T00:00:00+00:00")["entries"]) == 7

    table = _ls(server, tmp_path, "--limit", "3")
    assert table.returncode == 0, table.stderr
    assert f"more: underlay audit ls --before {first['next']['before']}" in table.stderr


def test_audit_ls_bad_time_is_one_line_error(server: LiveServer, tmp_path: Path) -> None:
    result = _ls(server, tmp_path, "--since", "soon")
    assert result.returncode != 0
    assert result.stderr.startswith("error: --since 'soon' is neither an ISO time")
    assert result.stderr.count("\n") == 1

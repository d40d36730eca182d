"""The ``underlay`` command line as a user runs it: child processes against a live server.

Client commands find the server through ``UNDERLAY_URL``/``UNDERLAY_TOKEN`` or the profile
``underlay login`` saved; local commands (``keys rotate``) work on a home folder that a
stopped server used. Failures must print exactly one line starting with ``error:`` and exit
non-zero, never a traceback. The server is the in-process one from ``tests/conftest.py``, on
SQLite only: the backends are covered by the API tests, here the face is under test.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.cli.conftest import ServerProcess, clean_env, run_cli
from tests.conftest import ADMIN_TOKEN, sqlite_url
from underlay.client import Client

Cli = Callable[..., CompletedProcess[str]]


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI (overrides the backend-parametrised fixture)."""
    return sqlite_url(sqlite_template, tmp_path)


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    home = tmp_path / "cli-home"
    home.mkdir()
    return home


@pytest.fixture
def cli(server, cli_home: Path) -> Cli:  # type: ignore[no-untyped-def]
    """Run a CLI command as the admin; ``env=`` replaces the UNDERLAY_* variables given."""

    def run(
        *args: str, env: dict[str, str] | None = None, ok: bool = True
    ) -> CompletedProcess[str]:
        underlay = {
            "UNDERLAY_URL": server.url,
            "UNDERLAY_TOKEN": server.admin_token,
            "UNDERLAY_HOME": str(cli_home),
        }
        if env is not None:
            underlay = env
        result = run_cli(*args, env=clean_env(**underlay))
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    return run


def as_json(result: CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def assert_one_line_error(result: CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- help ---------------------------------------------------------------------------------------


def test_help_exits_zero_and_lists_the_commands() -> None:
    result = run_cli("--help", env=clean_env())
    assert result.returncode == 0, result.stderr
    for command in ("up", "login", "demo", "projects", "users", "tokens", "blobs", "audit"):
        assert command in result.stdout
    assert "keys" in result.stdout and "lineage" in result.stdout


# -- resources ----------------------------------------------------------------------------------


def test_projects_create_and_ls(cli: Cli) -> None:
    assert cli("projects", "ls", "--json").stdout.strip() == "[]"
    out = cli("projects", "create", "vision", "--description", "image models").stdout
    assert "vision" in out
    listed = as_json(cli("projects", "ls", "--json"))
    assert [(p["name"], p["description"]) for p in listed] == [("vision", "image models")]
    assert "vision" in cli("projects", "ls").stdout  # the table form


def test_users_members_and_tokens(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    cli("projects", "create", "vision")
    cli("users", "create", "alice", "--email", "alice@example.org")
    assert "alice" in [u["name"] for u in as_json(cli("users", "ls", "--json"))]
    out = cli("projects", "add-member", "vision", "alice", "--role", "viewer").stdout
    assert "alice is viewer in vision" in out
    members = as_json(cli("projects", "members", "vision", "--json"))
    assert {(m["user"], m["role"]) for m in members} == {("admin", "admin"), ("alice", "viewer")}

    created = cli("tokens", "create", "for-alice", "--user", "alice", "--days", "2")
    secret = created.stdout.strip()
    assert secret.startswith("ul_") and "\n" not in secret
    assert secret not in created.stderr  # the hint on stderr names only the prefix
    with Client(server.url, secret) as alice:
        assert alice.me().name == "alice"
        assert alice.me().projects == {"vision": "viewer"}

    mine = cli("tokens", "create", "scratch").stdout.strip()
    tokens = as_json(cli("tokens", "ls", "--json"))
    scratch = next(t for t in tokens if t["name"] == "scratch")
    assert scratch["revoked_at"] is None
    assert all("token" not in t for t in tokens)  # secrets are never listed
    assert mine not in cli("tokens", "ls", "--json").stdout
    assert f"revoked token {scratch['id']}" in cli("tokens", "revoke", str(scratch["id"])).stdout
    revoked = next(t for t in as_json(cli("tokens", "ls", "--json")) if t["name"] == "scratch")
    assert revoked["revoked_at"] is not None
    env = {"UNDERLAY_URL": server.url, "UNDERLAY_TOKEN": mine}
    assert_one_line_error(cli("projects", "ls", env=env, ok=False), "revoked")


def test_blobs_put_get_ls(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    source = tmp_path / "flowers.csv"
    data = b"sepal,petal\n" + b"5.1,1.4\n" * 50_000
    source.write_bytes(data)
    digest = cli("blobs", "put", str(source), "-p", "vision").stdout.strip()
    assert digest == hashlib.sha256(data).hexdigest()

    listed = as_json(cli("blobs", "ls", "-p", "vision", "--json"))
    assert [(b["digest"], b["size"], b["name"]) for b in listed] == [
        (digest, len(data), "flowers.csv")
    ]
    out = tmp_path / "back" / "copy.csv"
    out.parent.mkdir()
    assert "wrote" in cli("blobs", "get", digest, "-p", "vision", "--out", str(out)).stdout
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.csv"]  # no .part left


def test_blobs_get_of_a_missing_blob_is_one_line(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    out = tmp_path / "nothing.bin"
    result = cli("blobs", "get", "0" * 64, "-p", "vision", "--out", str(out), ok=False)
    assert_one_line_error(result, "0" * 16)
    assert not out.exists()
    assert not list(tmp_path.glob(".nothing.bin*"))


def test_lineage_shows_edges(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    cli("projects", "create", "vision")
    with Client(server.url, ADMIN_TOKEN) as admin:
        data = admin.upload_blob("vision", b"training data")
    added = cli("lineage", "add", f"blob:{data.digest}", "input_of", "run:train-1", "-p", "vision")
    assert added.stdout.strip() == f"recorded blob:{data.digest} —input_of→ run:train-1"
    env = {"UNDERLAY_URL": server.url, "UNDERLAY_TOKEN": ADMIN_TOKEN, "UNDERLAY_PROJECT": "vision"}
    cli("lineage", "add", "run:train-1", "produced", "model:m1", env=env)  # -p from the env
    graph = as_json(cli("lineage", "show", "run", "train-1", "-p", "vision", "--json"))
    assert graph["root"] == {"kind": "run", "id": "train-1"}
    edges = {(e["src"]["id"], e["relation"], e["dst"]["id"]) for e in graph["edges"]}
    assert edges == {(data.digest, "input_of", "train-1"), ("train-1", "produced", "m1")}
    down = as_json(
        cli(
            "lineage",
            "show",
            "blob",
            data.digest,
            "-p",
            "vision",
            "--direction",
            "downstream",
            "--json",
        )
    )
    assert {n["id"] for n in down["nodes"]} >= {"train-1", "m1"}
    tree = cli("lineage", "show", "run", "train-1", "-p", "vision").stdout
    assert "input_of" in tree and "produced" in tree


@pytest.mark.parametrize("ref", ["blob", "blob:", ":abc", "train-1"])
def test_lineage_add_of_a_malformed_ref_is_one_line(cli: Cli, ref: str) -> None:
    result = cli("lineage", "add", ref, "input_of", "run:train-1", "-p", "vision", ok=False)
    assert_one_line_error(result, f"{ref!r} is not KIND:ID")
    result = cli("lineage", "add", "run:train-1", "produced", ref, "-p", "vision", ok=False)
    assert_one_line_error(result, "DST")


def test_audit_verify_and_ls(cli: Cli) -> None:
    cli("projects", "create", "vision")
    verified = cli("audit", "verify")
    assert verified.stdout.startswith("audit log OK")
    entries = as_json(cli("audit", "ls", "--json"))["entries"]
    assert "project.create" in [e["action"] for e in entries]
    assert all({"seq", "actor", "action", "outcome", "hash"} <= set(e) for e in entries)
    only = as_json(cli("audit", "ls", "--json", "--action", "project.create"))["entries"]
    assert [e["resource"] for e in only] == ["project:vision"]


# -- profiles and errors ------------------------------------------------------------------------


def test_login_saves_a_profile_used_without_a_token(server, cli: Cli, cli_home: Path) -> None:  # type: ignore[no-untyped-def]
    cli("projects", "create", "vision")
    bare = {"UNDERLAY_HOME": str(cli_home)}
    assert_one_line_error(cli("projects", "ls", env=bare, ok=False), "token")
    out = cli("login", "--url", server.url, "--token", server.admin_token, env=bare).stdout
    assert "logged in" in out and "admin" in out
    assert server.admin_token not in out
    profiles = Path(f"{cli_home}-config") / "underlay" / "profiles.json"
    assert stat.S_IMODE(profiles.stat().st_mode) == 0o600
    assert stat.S_IMODE(profiles.parent.stat().st_mode) == 0o700
    assert json.loads(profiles.read_text()) == {
        "current": "default",
        "profiles": {"default": {"url": server.url, "token": server.admin_token}},
    }
    assert [p["name"] for p in as_json(cli("projects", "ls", "--json", env=bare))] == ["vision"]


def test_login_with_a_bad_token_saves_nothing(server, cli: Cli, cli_home: Path) -> None:  # type: ignore[no-untyped-def]
    bare = {"UNDERLAY_HOME": str(cli_home)}
    result = cli(
        "login", "--url", server.url, "--token", "ul_wrong-" + "x" * 40, env=bare, ok=False
    )
    assert_one_line_error(result, "not valid")
    assert not Path(f"{cli_home}-config").exists()


def test_bad_token_is_one_line(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    env = {"UNDERLAY_URL": server.url, "UNDERLAY_TOKEN": "ul_not-a-real-token-" + "y" * 32}
    for args in (("projects", "ls"), ("audit", "verify"), ("blobs", "ls", "-p", "vision")):
        line = assert_one_line_error(cli(*args, env=env, ok=False), "not valid")
        assert "y" * 32 not in line


def test_unreachable_server_is_one_line(cli: Cli) -> None:
    env = {"UNDERLAY_URL": "http://127.0.0.1:9", "UNDERLAY_TOKEN": ADMIN_TOKEN}
    assert_one_line_error(cli("projects", "ls", env=env, ok=False), "cannot reach")


def test_blobs_put_of_a_missing_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    missing = tmp_path / "no-such-file.bin"
    line = assert_one_line_error(cli("blobs", "put", str(missing), "-p", "vision", ok=False))
    assert "no-such-file.bin" in line


def test_server_side_refusals_are_one_line(cli: Cli) -> None:
    assert_one_line_error(cli("projects", "create", "Bad Name", ok=False), "name")
    cli("projects", "create", "vision")
    assert_one_line_error(cli("projects", "create", "vision", ok=False), "exists")
    assert_one_line_error(cli("projects", "add-member", "vision", "ghost", ok=False), "ghost")
    assert_one_line_error(cli("tokens", "revoke", "999999", ok=False), "999999")


# -- local commands -----------------------------------------------------------------------------


def test_keys_rotate_keeps_blobs_readable_and_refuses_the_old_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = b"encrypted at rest " * 1000
    with ServerProcess(home) as server, Client(server.url, ADMIN_TOKEN) as admin:
        admin.create_project("vision")
        digest = admin.upload_blob("vision", data).digest
    old_key = (home / "master.key").read_bytes()

    rotated = run_cli("keys", "rotate", env=clean_env(UNDERLAY_HOME=str(home)))
    assert rotated.returncode == 0, rotated.stderr
    assert "master key rotated" in rotated.stdout
    assert (home / "master.key").read_bytes() != old_key
    assert stat.S_IMODE((home / "master.key").stat().st_mode) == 0o600

    with ServerProcess(home) as server, Client(server.url, ADMIN_TOKEN) as admin:
        assert admin.download_blob("vision", digest) == data
        assert admin.verify_audit().ok
        assert [e.action for e in admin.list_audit(action="keys.rotate")] == ["keys.rotate"]

    (home / "master.key").write_bytes(old_key)  # an attacker or a stale backup puts it back
    with ServerProcess(home) as server:
        env = clean_env(
            UNDERLAY_URL=server.url, UNDERLAY_TOKEN=ADMIN_TOKEN, UNDERLAY_HOME=str(tmp_path)
        )
        out = tmp_path / "back.bin"
        result = run_cli("blobs", "get", digest, "-p", "vision", "--out", str(out), env=env)
        assert_one_line_error(result, "master key")
        assert not out.exists()
    refused = run_cli("keys", "rotate", env=clean_env(UNDERLAY_HOME=str(home)))
    assert_one_line_error(refused, "master key")


def test_granting_project_creation(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    cli("users", "create", "alice")
    secret = cli("tokens", "create", "t", "--user", "alice").stdout.strip()
    as_alice = {"UNDERLAY_URL": server.url, "UNDERLAY_TOKEN": secret}
    refused = cli("projects", "create", "mine", env=as_alice, ok=False)
    assert_one_line_error(refused, "may not create projects")
    granted = cli("users", "grant", "alice", "project-creator").stdout
    assert "alice holds: project-creator" in granted
    assert "created project mine" in cli("projects", "create", "mine", env=as_alice).stdout
    assert "alice holds: no grants" in cli("users", "revoke", "alice", "project-creator").stdout
    assert_one_line_error(cli("users", "grant", "alice", "root", ok=False), "")


# -- day-one commands -----------------------------------------------------------------------------


def test_blobs_get_to_stdout_or_into_a_folder_and_rm(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    source = tmp_path / "labels.txt"
    data = b"cat\ndog\n" * 1000
    source.write_bytes(data)
    digest = cli("blobs", "put", str(source), "-p", "vision").stdout.strip()

    piped = cli("blobs", "get", digest, "-p", "vision", "-o", "-")
    assert piped.stdout == data.decode()  # the bytes on stdout, nothing else
    assert not Path("-").exists()
    folder = tmp_path / "downloads"
    folder.mkdir()
    assert "wrote" in cli("blobs", "get", digest, "-p", "vision", "-o", str(folder)).stdout
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt"]
    assert (folder / "labels.txt").read_bytes() == data

    assert cli("blobs", "rm", digest, "-p", "vision").stdout.strip() == (
        f"deleted blob {digest} from vision"
    )
    assert as_json(cli("blobs", "ls", "-p", "vision", "--json")) == []
    assert_one_line_error(cli("blobs", "rm", digest, "-p", "vision", ok=False), "has no blob")


def test_alerts_ls_and_resolve(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from underlay.compute.alerts import record_alert
    from underlay.store import Scope
    from underlay.store.models import Project

    cli("projects", "create", "vision")
    with server.platform.db.session(Scope.everything()) as session:
        vision = session.scalar(select(Project).where(Project.name == "vision"))
        alert, _ = record_alert(session, "budget", "vision at 85%", vision.id, subject="budget")
        alert_id = alert.id
    (listed,) = as_json(cli("alerts", "ls", "--json"))
    assert (listed["id"], listed["kind"]) == (alert_id, "budget")
    assert listed["message"] == "vision at 85%"
    assert "vision at 85%" in cli("alerts", "ls", "-p", "vision").stdout
    out = cli("alerts", "resolve", str(alert_id)).stdout.strip()
    assert out == f"resolved alert {alert_id}: budget"
    assert as_json(cli("alerts", "ls", "--json")) == []
    (resolved,) = as_json(cli("alerts", "ls", "--resolved", "--json"))
    assert resolved["id"] == alert_id and resolved["resolved_at"] is not None
    assert_one_line_error(cli("alerts", "resolve", "999999", ok=False), "999999")


def test_data_commands_print_json(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    cli("projects", "create", "speech")
    source = tmp_path / "data.bin"
    source.write_bytes(b"json please")
    blob = as_json(cli("blobs", "put", str(source), "-p", "vision", "--json"))
    assert blob["digest"] == hashlib.sha256(b"json please").hexdigest()
    token = as_json(cli("tokens", "create", "laptop", "--json"))
    assert token["name"] == "laptop" and token["token"].startswith(token["prefix"])
    report = as_json(cli("audit", "verify", "--json"))
    assert report["ok"] is True and report["entries_checked"] >= 3
    assert report["problem"] is None
    vision = as_json(cli("audit", "ls", "-p", "vision", "--json"))["entries"]
    assert vision and {e["project"] for e in vision} == {"vision"}


def test_project_comes_from_the_environment_when_p_is_left_out(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    cli("projects", "create", "vision")
    env = {"UNDERLAY_URL": server.url, "UNDERLAY_TOKEN": ADMIN_TOKEN, "UNDERLAY_PROJECT": "vision"}
    assert as_json(cli("blobs", "ls", "--json", env=env)) == []
    env.pop("UNDERLAY_PROJECT")
    assert_one_line_error(cli("blobs", "ls", env=env, ok=False), "no project: give -p/--project")


# -- readable output ----------------------------------------------------------------------------


def narrow(server, cli_home: Path, *args: str) -> str:  # type: ignore[no-untyped-def]
    """``underlay <args>`` as the admin in an 80-column terminal; its table output."""
    env = clean_env(
        UNDERLAY_URL=server.url, UNDERLAY_TOKEN=server.admin_token, UNDERLAY_HOME=str(cli_home)
    )
    env["COLUMNS"] = "80"
    result = run_cli(*args, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stdout


def shows_whole(out: str, *identifiers: str, fits: bool = True) -> None:
    """Each identifier appears unbroken on one line, and nothing is cut with an ellipsis."""
    if fits:
        assert max(len(line) for line in out.splitlines()) <= 80, out
        # Rich crops a table wider than the terminal: every line must keep its right border.
        assert all(line.rstrip()[-1] in "┓┃┩│┘" for line in out.splitlines() if line.strip()), out
    for ident in identifiers:
        assert ident in out, (ident, out)
    assert "…" not in out, out


def test_users_me_is_a_readable_summary(server, cli: Cli) -> None:  # type: ignore[no-untyped-def]
    cli("projects", "create", "vision")
    cli("projects", "create", "audio")
    cli("users", "create", "alice")
    cli("projects", "add-member", "vision", "alice", "--role", "viewer")
    cli("users", "grant", "alice", "project-creator")
    secret = cli("tokens", "create", "alice-cli", "--user", "alice").stdout.strip()
    env = {"UNDERLAY_URL": server.url, "UNDERLAY_TOKEN": secret}
    lines = cli("users", "me", env=env).stdout.splitlines()
    assert lines == [
        "user:     alice",
        "admin:    no",
        "grants:   project-creator",
        "projects: vision (viewer)",
    ]
    admin = cli("users", "me").stdout
    assert "admin:    yes (global admin)" in admin
    assert "projects: audio (admin), vision (admin)" in admin and "{" not in admin
    assert as_json(cli("users", "me", "--json", env=env))["projects"] == {"vision": "viewer"}


def test_blobs_tokens_and_audit_tables_fit_80_columns(
    server, cli: Cli, cli_home: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cli("projects", "create", "vision")
    tokens = [cli("tokens", "create", f"ci-runner-token-{i}", "--days", "30") for i in range(2)]
    assert all(t.returncode == 0 for t in tokens)
    listed = as_json(cli("tokens", "ls", "--json"))
    out = narrow(server, cli_home, "tokens", "ls")
    shows_whole(out, *(t["name"] for t in listed), *(t["prefix"] for t in listed))
    audit = narrow(server, cli_home, "audit", "ls")
    shows_whole(audit, "project:vision", "token.create")

    source = tmp_path / "imagenet-train-shard-00042-of-01024.tar"
    source.write_bytes(b"x" * 3_000_000)
    digest = cli("blobs", "put", str(source), "-p", "vision").stdout.strip()
    blobs = narrow(server, cli_home, "blobs", "ls", "-p", "vision")
    shows_whole(blobs, digest, "2.86 MiB")
    listed = as_json(cli("blobs", "ls", "-p", "vision", "--json"))
    assert listed[0]["size"] == 3_000_000  # raw bytes
    # A resource naming a digest is wider than 80 columns: the table grows rather than cut it.
    audit = narrow(server, cli_home, "audit", "ls")
    shows_whole(audit, f"project:vision/blob:{digest}", fits=False)


def test_blobs_are_named_by_sha256_and_short_prefixes_in_the_cli(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights")
    digest = cli("blobs", "put", str(source), "-p", "vision").stdout.strip()
    got = cli("blobs", "get", f"sha256:{digest}", "-o", "-", "-p", "vision").stdout
    assert got == "weights"
    assert cli("blobs", "get", digest[:8], "-o", "-", "-p", "vision").stdout == "weights"
    result = cli("blobs", "get", "abc", "-o", "-", "-p", "vision", ok=False)
    assert_one_line_error(result, "at least 8")
    result = cli("blobs", "rm", "00000000", "-p", "vision", ok=False)
    assert_one_line_error(result, "starts with 00000000")
    assert digest[:12] in cli("blobs", "rm", f"sha256:{digest[:12]}", "-p", "vision").stdout
    assert as_json(cli("blobs", "ls", "-p", "vision", "--json")) == []

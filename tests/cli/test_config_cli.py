"""Client configuration as a user meets it: one precedence for the CLI and the SDK.

flags > environment (``UNDERLAY_URL``, ``UNDERLAY_TOKEN``, ``UNDERLAY_PROJECT``) > the active
profile (``--profile``, ``UNDERLAY_PROFILE``, the current one) > defaults. CLI commands run as
child processes against a live server; profiles live in a per-test ``XDG_CONFIG_HOME``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer, sqlite_url
from underlay.client import Client
from underlay.config import unknown_env_warnings
from underlay.errors import NotFound

Cli = Callable[..., CompletedProcess[str]]
DEAD_URL = "http://127.0.0.1:9"  # discard port: nothing listens


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI (overrides the backend-parametrised fixture)."""
    return sqlite_url(sqlite_template, tmp_path)


@pytest.fixture
def xdg(tmp_path: Path) -> Path:
    return tmp_path / "xdg"


@pytest.fixture
def cli(xdg: Path, tmp_path: Path) -> Cli:
    """Run a CLI command with only the UNDERLAY_* variables given and a private config dir."""

    def run(*args: str, ok: bool = True, **underlay: str) -> CompletedProcess[str]:
        env = clean_env(
            UNDERLAY_HOME=str(tmp_path / "cli-home"), XDG_CONFIG_HOME=str(xdg), **underlay
        )
        env["COLUMNS"] = "200"
        result = run_cli(*args, env=env)
        if ok:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, result.stderr
        return result

    return run


def shown(cli: Cli, *args: str, **underlay: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli(*args, "config", "show", "--json", **underlay).stdout)
    return result


def one_line_error(result: CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_login_goes_to_the_url_in_the_environment(cli: Cli, server: LiveServer) -> None:
    out = cli("login", "--token", server.admin_token, UNDERLAY_URL=server.url).stdout
    assert f"logged in to {server.url} as admin" in out
    config = shown(cli)
    assert config["url"] == {"value": server.url, "source": "profile 'default'"}
    assert config["token"]["source"] == "profile 'default'"


def test_flags_beat_environment_beat_profile_beat_defaults(cli: Cli, server: LiveServer) -> None:
    assert shown(cli)["url"] == {"value": "http://127.0.0.1:8765", "source": "default"}
    assert shown(cli)["token"] == {"value": None, "source": "not set"}
    cli("login", "--url", server.url, "--token", server.admin_token, "--project", "vision")
    assert shown(cli)["project"] == {"value": "vision", "source": "profile 'default'"}

    env = shown(cli, UNDERLAY_URL=DEAD_URL, UNDERLAY_PROJECT="nlp")
    assert env["url"] == {"value": DEAD_URL, "source": "environment UNDERLAY_URL"}
    assert env["project"] == {"value": "nlp", "source": "environment UNDERLAY_PROJECT"}
    one_line_error(cli("users", "me", ok=False, UNDERLAY_URL=DEAD_URL), "cannot reach")

    flagged = shown(cli, "--url", server.url, UNDERLAY_URL=DEAD_URL)
    assert flagged["url"] == {"value": server.url, "source": "flag --url"}
    assert "admin" in cli("--url", server.url, "users", "me", UNDERLAY_URL=DEAD_URL).stdout
    project = json.loads(
        cli("config", "show", "-p", "cv", "--json", UNDERLAY_PROJECT="nlp").stdout
    )["project"]
    assert project == {"value": "cv", "source": "flag --project"}


def test_config_show_prints_the_token_only_as_its_prefix(cli: Cli, server: LiveServer) -> None:
    cli("login", "--url", server.url, "--token", server.admin_token)
    table = cli("config", "show").stdout
    as_json = cli("config", "show", "--json").stdout
    for out in (table, as_json):
        assert server.admin_token not in out
        assert server.admin_token[:10] in out
    for line in ("url", "token", "project", "profile"):
        assert line in table
    assert "profile 'default'" in table and server.url in table


def test_named_profiles_and_a_default_project(cli: Cli, server: LiveServer) -> None:
    with server.client() as admin:
        admin.create_project("vision")
        admin.create_user("alice")
        admin.add_member("vision", "alice", "viewer")
        alice = admin.create_token("laptop", user="alice").token
    cli("login", "--profile", "ops", "--url", server.url, "--token", server.admin_token)
    cli("login", "--profile", "mine", "--url", server.url, "--token", alice, "-p", "vision")
    # the last login is current; --profile and UNDERLAY_PROFILE pick another
    assert json.loads(cli("users", "me", "--json").stdout)["name"] == "alice"
    assert json.loads(cli("--profile", "ops", "users", "me", "--json").stdout)["name"] == "admin"
    by_env = cli("users", "me", "--json", UNDERLAY_PROFILE="ops")
    assert json.loads(by_env.stdout)["name"] == "admin"
    assert shown(cli, UNDERLAY_PROFILE="ops")["profile"] == {
        "value": "ops",
        "source": "environment UNDERLAY_PROFILE",
    }
    # the profile's project is the default of -p; the environment and -p beat it
    assert json.loads(cli("jobs", "ls", "--json").stdout) == []
    one_line_error(cli("jobs", "ls", ok=False, UNDERLAY_PROJECT="ghost"), "ghost")
    one_line_error(cli("--profile", "ops", "jobs", "ls", ok=False), "no project", "-p")
    assert cli("--profile", "ops", "jobs", "ls", "-p", "vision", "--json").stdout.strip() == "[]"

    assert "now current" in cli("config", "use", "ops").stdout
    assert json.loads(cli("users", "me", "--json").stdout)["name"] == "admin"
    one_line_error(cli("--profile", "nope", "users", "me", ok=False), "'nope' not found", "login")
    one_line_error(cli("config", "use", "nope", ok=False), "'nope' not found")

    assert "removed" in cli("logout", "--profile", "ops").stdout
    one_line_error(cli("--profile", "ops", "users", "me", ok=False), "'ops' not found")
    assert "nothing to do" in cli("logout", "--profile", "ops").stdout


def test_the_sdk_reads_the_saved_profile_with_the_same_precedence(
    cli: Cli, server: LiveServer, xdg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = server.admin_token
    cli("login", "--profile", "work", "--url", server.url, "--token", token, "-p", "cv")
    failed = cli("login", "--profile", "x", "--url", DEAD_URL, "--token", "ul_x", ok=False)
    one_line_error(failed, "cannot reach")  # and nothing saved: 'work' stays current
    for name in ("UNDERLAY_URL", "UNDERLAY_TOKEN", "UNDERLAY_PROFILE", "UNDERLAY_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    with Client.from_env() as ul:
        assert ul.me().name == "admin"  # the current profile, as 'login' left it
    with Client.from_env(profile="work") as ul:
        assert ul.me().name == "admin" and ul.project == "cv"  # the profile's default project
    monkeypatch.setenv("UNDERLAY_URL", DEAD_URL)
    with Client.from_env() as ul:
        assert not ul.ready()  # the environment beats the profile
    with Client.from_env(url=server.url) as ul:
        assert ul.me().name == "admin"  # an argument beats the environment
    monkeypatch.setenv("UNDERLAY_PROFILE", "nope")
    with pytest.raises(NotFound, match="profile 'nope' not found"):
        Client.from_env()


def test_an_unknown_underlay_variable_is_warned_about_with_the_closest_name(cli: Cli) -> None:
    result = cli("config", "show", UNDERLAY_DATABASE_URL="postgresql+psycopg://u@db/x")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: UNDERLAY_DATABASE_URL is not an underlay setting and is ignored; "
        "did you mean UNDERLAY_STORE__URL?"
    ]
    assert "warning" not in cli("config", "show", UNDERLAY_STORE__URL="sqlite://").stderr


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("UNDERLAY_DATABASE_URL", "UNDERLAY_STORE__URL"),
        ("UNDERLAY_SERVER_PORT", "UNDERLAY_SERVER__PORT"),
        ("UNDERLAY_PORT", "UNDERLAY_SERVER__PORT"),
        ("UNDERLAY_TOKNE", "UNDERLAY_TOKEN"),
        ("UNDERLAY_BLOB_URL", "UNDERLAY_BLOBS__URL"),
        ("underlay_log_levl", "UNDERLAY_LOG_LEVEL"),
    ],
)
def test_the_closest_setting_is_named(name: str, closest: str) -> None:
    (warning,) = unknown_env_warnings({name: "1"})
    assert warning.startswith(name) and warning.endswith(f"did you mean {closest}?")


def test_known_names_are_not_warned_about() -> None:
    known = [
        "UNDERLAY_URL",
        "UNDERLAY_TOKEN",
        "UNDERLAY_PROJECT",
        "UNDERLAY_PROFILE",
        "UNDERLAY_JOB_ID",
        "UNDERLAY_ATTEMPT",
        "UNDERLAY_GPU_FRACTION",
        "UNDERLAY_ADMIN_TOKEN",
        "UNDERLAY_HOME",
        "UNDERLAY_TEST_PG",
        "UNDERLAY_STORE__URL",
        "UNDERLAY_STORE",
        "UNDERLAY_COMPUTE__SIMULATED_ACCELERATORS",
        "UNDERLAY_COMPUTE__PRICES__A100",
        "UNDERLAY_SECURITY__AUDIT_CHECKPOINT_INTERVAL_S",
        "PATH",
    ]
    assert unknown_env_warnings(dict.fromkeys(known, "1")) == []


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "gen_config_docs.py"
    check = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    doc = (script.parent.parent / "docs" / "configuration.md").read_text()
    for name in (
        "UNDERLAY_COMPUTE__PRICES",
        "UNDERLAY_COMPUTE__GRID_INTENSITY_G_PER_KWH",
        "UNDERLAY_COMPUTE__SIMULATED_ACCELERATORS",
        "UNDERLAY_COMPUTE__ISOLATION",
        "UNDERLAY_SERVER__PORT",
        "UNDERLAY_URL",
    ):
        assert f"`{name}`" in doc


def test_the_cli_retries_an_unreachable_server_only_when_given_a_budget(cli: Cli) -> None:
    down = {"UNDERLAY_URL": DEAD_URL, "UNDERLAY_TOKEN": "ul_" + "x" * 40}
    plain = one_line_error(cli("users", "me", ok=False, **down), "cannot reach")
    assert "retried" not in plain
    budget = {**down, "UNDERLAY_RETRY_BUDGET_S": "1"}
    one_line_error(cli("users", "me", ok=False, **budget), "cannot reach", "retried for up to 1 s")
    bad = {**down, "UNDERLAY_RETRY_BUDGET_S": "soon"}
    one_line_error(cli("users", "me", ok=False, **bad), "UNDERLAY_RETRY_BUDGET_S must be a number")


def test_inside_a_job_the_cli_retries_by_default(tmp_path: Path) -> None:
    """A job's CLI command started while the server is down goes through once it is up."""
    from tests.cli.conftest import CLI, ServerProcess
    from tests.conftest import ADMIN_TOKEN, free_port
    from underlay.cli.common import retry_budget

    assert retry_budget({}) == 0
    assert retry_budget({"UNDERLAY_JOB_ID": "7"}) == 30
    assert retry_budget({"UNDERLAY_JOB_ID": "7", "UNDERLAY_RETRY_BUDGET_S": "0"}) == 0
    port = free_port()
    env = clean_env(
        UNDERLAY_URL=f"http://127.0.0.1:{port}", UNDERLAY_TOKEN=ADMIN_TOKEN, UNDERLAY_JOB_ID="7"
    )
    command = subprocess.Popen(
        [*CLI, "users", "me"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server = ServerProcess(tmp_path / "home", port=port)  # starts slower than the command
    try:
        server.start(ready_within_s=120)
        out, err = command.communicate(timeout=120)
    finally:
        command.kill()
        server.stop()
    assert command.returncode == 0, err
    assert "admin" in out

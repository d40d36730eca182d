"""One grammar for every command, checked over the whole Typer app so it stays true as
commands are added: the project is ``-p/--project`` (never positional, but in the
``projects`` group), boolean flags read as plain flags in help, every command that prints data
takes ``--json``; and the app-wide options ``--version`` and shell completion.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from tests.cli.conftest import clean_env, run_cli
from underlay.cli.main import app

# commands that print no data, only a confirmation, a stream or a file (or run a server)
NO_JSON = {
    "up",
    "login",
    "logout",
    "demo",
    "agent",
    "config use",
    "projects create",
    "projects delete",
    "projects add-member",
    "projects set-role",
    "projects remove-member",
    "users create",
    "users grant",
    "users revoke",
    "users deactivate",
    "tokens revoke",
    "blobs get",
    "blobs rm",
    "deployments rm",
    "alerts rules rm",
    "alerts webhooks rm",
    "keys rotate",
    "nodes cordon",
    "nodes uncordon",
    "jobs logs",
    "pipelines logs",
    "pipelines step",
    "quotas set",
    "users passwd",
    "datasets create",
    "models rm",
    "datasets rm",
    "tables rm",
    "tables checks rm",
    "runs rm",
    # these print JSON lines always
    "sql",
    "tables head",
}


def commands() -> Iterator[tuple[str, Any]]:
    """Every leaf command of the app, by its full name (``jobs ls``)."""

    def walk(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    yield from walk(typer.main.get_command(app), [])


ALL = dict(commands())


def test_the_walk_sees_every_group() -> None:
    groups = {name.split()[0] for name in ALL}
    assert {"blobs", "jobs", "lineage", "quotas", "budget", "projects", "audit"} <= groups
    assert {"lineage show", "lineage add", "blobs put", "jobs wait"} <= ALL.keys()


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_command_takes_a_positional_project_but_the_projects_group(name: str) -> None:
    arguments = [p.name for p in ALL[name].params if p.param_type_name == "argument"]
    if name.startswith("projects "):
        return
    assert "project" not in arguments, f"{name}: the project is -p/--project, not an argument"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_project_option_is_spelled_p_and_project(name: str) -> None:
    for param in ALL[name].params:
        if param.param_type_name == "option" and (
            param.name == "project" or {"-p", "--project"} & set(param.opts)
        ):
            assert sorted(param.opts) == ["--project", "-p"], (name, param.opts)
            assert param.name == "project", name


@pytest.mark.parametrize("name", sorted(ALL))
def test_boolean_flags_show_no_type_in_help(name: str) -> None:
    flags = [p for p in ALL[name].params if getattr(p, "is_flag", False)]
    for flag in flags:
        assert flag.metavar == "", f"{name} {flag.opts}: help would show <bool>"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_command_that_prints_data_has_json(name: str) -> None:
    options = {o for p in ALL[name].params for o in getattr(p, "opts", [])}
    if name in NO_JSON:
        return
    assert "--json" in options, f"{name} prints data: give it --json (or list it in NO_JSON)"


def test_jobs_ls_help_reads_json_as_a_plain_flag() -> None:
    result = CliRunner().invoke(app, ["jobs", "ls", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (json_line,) = [line for line in result.output.splitlines() if "--json" in line]
    assert "<bool>" not in json_line and "Print JSON" in json_line
    assert "--state running,queued" in " ".join(result.output.split())


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"underlay {version('underlay')}\n"


def test_bash_completion_script_is_shown_without_a_login_shell() -> None:
    env = clean_env()
    env.pop("SHELL", None)
    result = run_cli("--show-completion", "bash", env=env)
    assert result.returncode == 0, result.stderr
    assert "complete " in result.stdout and "_underlay_completion" in result.stdout
    assert "_UNDERLAY_COMPLETE=complete_bash" in result.stdout


def test_install_completion_is_an_option() -> None:
    result = run_cli("--help", env=clean_env())
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_an_unknown_state_is_one_line_listing_the_valid_ones() -> None:
    result = run_cli("jobs", "ls", "-p", "vision", "--state", "running,sleeping", env=clean_env())
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "'sleeping'" in line
    assert "valid: queued, admitted, running, succeeded, failed, cancelled" in line


@pytest.mark.parametrize("ref", ["blob", "blob:", ":abc"])
def test_a_malformed_lineage_ref_is_one_line_before_any_server(ref: str) -> None:
    result = run_cli("lineage", "add", ref, "input_of", "run:train-1", env=clean_env())
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and f"{ref!r} is not KIND:ID" in line


@pytest.mark.parametrize(
    "args",
    [
        ("blobs", "ls", "vision"),
        ("quotas", "ls", "vision"),
        ("budget", "show", "vision"),
        ("lineage", "show", "vision", "run", "train-1"),
    ],
)
def test_the_old_positional_project_is_a_one_line_usage_error(args: tuple[str, ...]) -> None:
    result = run_cli(*args, env=clean_env())
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "unexpected extra argument" in line.lower()


def test_help_shows_no_bool_type_anywhere() -> None:
    """Not even beside ``--help`` itself, as the ``underlay`` command prints it."""
    from tests.cli.conftest import clean_env, run_cli

    env = clean_env()
    env["COLUMNS"] = "120"
    for args in (["--help"], ["jobs", "ls", "--help"], ["tables", "ingest", "--help"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert "--help" in result.stdout and "<bool>" not in result.stdout, args

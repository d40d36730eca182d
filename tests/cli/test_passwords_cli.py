"""Passwords from scripts: ``--password-stdin`` on ``users create`` and ``login``; no prompt
(and no getpass warning) when stdin is not a terminal."""

from __future__ import annotations

from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only for the CLI (overrides the backend-parametrised fixture)."""
    return f"sqlite:///{tmp_path / 'underlay.db'}"


def _cli(
    tmp_path: Path, server: LiveServer, *args: str, stdin: str | None = None, token: bool = True
) -> CompletedProcess[str]:
    extra = {"UNDERLAY_TOKEN": server.admin_token} if token else {}
    env = clean_env(
        UNDERLAY_HOME=str(tmp_path / "cli-home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        UNDERLAY_URL=server.url,
        **extra,
    )
    result = run_cli(*args, env=env, stdin=stdin)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "Warning" not in result.stderr, result.stderr  # getpass's "Can not control echo"
    return result


def test_a_script_creates_a_user_and_logs_in_without_a_terminal(
    tmp_path: Path, server: LiveServer
) -> None:
    made = _cli(
        tmp_path, server, "users", "create", "ann", "--password-stdin", stdin="s3cret-pw!\n"
    )
    assert made.returncode == 0, made.stderr
    login = ["login", "--user", "ann", "--password-stdin"]
    wrong = _cli(tmp_path, server, *login, stdin="nope-nope\n", token=False)
    assert wrong.returncode != 0 and wrong.stderr.startswith("error:")
    good = _cli(tmp_path, server, *login, stdin="s3cret-pw!\n", token=False)
    assert good.returncode == 0, good.stderr
    assert "as ann" in good.stdout
    assert "ann" in _cli(tmp_path, server, "users", "me", token=False).stdout


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["users", "create", "bo", "--password"], "pw\n", "error: stdin is not a terminal: pass"),
        (["users", "create", "bo", "--password-stdin"], "", "error: --password-stdin read no"),
        (["login", "--password-stdin"], "pw\n", "error: --password-stdin needs --user NAME"),
        (["login", "--user", "bo"], "pw\n", "error: stdin is not a terminal: pass"),
    ],
)
def test_no_terminal_and_no_password_stdin_is_one_line_error(
    tmp_path: Path, server: LiveServer, args: list[str], stdin: str, message: str
) -> None:
    result = _cli(tmp_path, server, *args, stdin=stdin, token=args[0] != "login")
    assert result.returncode != 0
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1

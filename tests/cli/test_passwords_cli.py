"""Passwords from scripts: ``--password-stdin`` on ``users create`` and ``login``; no prompt
(and no getpass warning) when stdin is not a terminal."""

from __future__ import annotations

from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.cli.conftest import clean_env, run_cli
from tests.conftest import LiveServer, sqlite_url


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI (overrides the backend-parametrised fixture)."""
    return sqlite_url(sqlite_template, tmp_path)


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


def _as(
    tmp_path: Path, server: LiveServer, token: str, *args: str, stdin: str
) -> CompletedProcess[str]:
    env = clean_env(
        UNDERLAY_HOME=str(tmp_path / "cli-home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        UNDERLAY_URL=server.url,
        UNDERLAY_TOKEN=token,
    )
    result = run_cli(*args, env=env, stdin=stdin)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def test_changing_your_password_checks_the_old_one_and_revokes_your_other_tokens(
    tmp_path: Path, server: LiveServer
) -> None:
    from underlay.client import Client
    from underlay.errors import Unauthenticated

    with server.client() as admin:
        admin.create_user("ann", password="first-pw-1")
    with Client(server.url) as anonymous:
        here = anonymous.login("ann", "first-pw-1").token
        elsewhere = anonymous.login("ann", "first-pw-1").token
    passwd = ["users", "passwd", "--password-stdin"]
    wrong = _as(tmp_path, server, here, *passwd, stdin="not-it-at-all\nsecond-pw-2\n")
    assert wrong.returncode != 0
    assert wrong.stderr == "error: the current password is wrong; nothing was changed\n"
    done = _as(tmp_path, server, here, *passwd, stdin="first-pw-1\nsecond-pw-2\n")
    assert done.returncode == 0, done.stderr
    assert "password of ann changed" in done.stdout
    with Client(server.url, here) as kept, Client(server.url, elsewhere) as revoked:
        assert kept.me().name == "ann"
        with pytest.raises(Unauthenticated):
            revoked.me()
    with Client(server.url) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.login("ann", "first-pw-1")
        assert anonymous.login("ann", "second-pw-2").token
    with server.client() as admin:
        audited = admin.list_audit(action="user.password")
    assert [e.outcome for e in audited] == ["denied", "ok"]
    assert not any("pw" in e.model_dump_json() for e in audited)  # no password in the log


def test_an_admin_resets_a_password_and_every_token_of_that_user_is_revoked(
    tmp_path: Path, server: LiveServer
) -> None:
    from underlay.client import Client
    from underlay.errors import Unauthenticated

    with server.client() as admin:
        admin.create_user("ann", password="first-pw-1")
        admin.create_user("bob", password="bobs-pw-11")
    with Client(server.url) as anonymous:
        ann = anonymous.login("ann", "first-pw-1").token
    refused = _as(
        tmp_path,
        server,
        ann,
        "users",
        "passwd",
        "bob",
        "--reset",
        "--password-stdin",
        stdin="x" * 9 + "\n",
    )
    assert refused.returncode != 0
    assert refused.stderr.startswith("error: ann is not a global admin; only a global admin")
    reset = ["users", "passwd", "ann", "--reset", "--password-stdin"]
    done = _as(tmp_path, server, server.admin_token, *reset, stdin="reset-pw-3\n")
    assert done.returncode == 0, done.stderr
    with Client(server.url, ann) as revoked, pytest.raises(Unauthenticated):
        revoked.me()
    with Client(server.url) as anonymous:
        assert anonymous.login("ann", "reset-pw-3").token
    mixed = _as(tmp_path, server, server.admin_token, "users", "passwd", "--reset", stdin="")
    assert mixed.returncode != 0 and mixed.stderr.startswith("error: ")
    assert mixed.stderr.count("\n") == 1

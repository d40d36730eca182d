"""Structured logs: one JSON object per line, access lines with request ids, no secrets.

``logs.configure`` replaces the root logger's handlers, so it runs in a child process here
(the test process's own logging belongs to pytest). The formatters are plain objects and are
checked in process. The end-to-end test runs ``underlay up --log-format json`` and makes
authenticated requests, then reads everything the server printed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.conftest import ServerProcess, clean_env
from tests.conftest import ADMIN_TOKEN
from underlay.logs import JsonFormatter, TextFormatter, redact

TOKEN = "ul_" + "Secr3tTokenBody_" * 3
BEARER = "Bearer abc.def-ghi_jkl"


def _record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "underlay.test", "levelno": 20, "levelname": "INFO"})
    record.msg, record.args = msg, args or None
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- configure("json") in a child process ---------------------------------------------------


def test_configure_json_writes_one_object_per_line() -> None:
    script = textwrap.dedent(
        """
        import logging
        from underlay import logs
        logs.configure("json")
        log = logging.getLogger("underlay.demo")
        log.info("plain message")
        log.warning("two\\nlines %s", "here", extra={"request_id": "r-123", "n": 7})
        logging.getLogger("uvicorn.error").info("from uvicorn")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        log.debug("below the level")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses on its own
    assert [e["msg"] for e in entries] == [
        "plain message",
        "two\nlines here",
        "from uvicorn",
        "failed",
    ]
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    assert entries[1]["level"] == "warning"
    assert entries[1]["request_id"] == "r-123" and entries[1]["n"] == 7
    assert entries[2]["logger"] == "uvicorn.error"
    assert "ValueError: boom" in entries[3]["exc"]


# -- the formatters -------------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_tokens_and_bearer_values_in_messages_are_redacted(formatter: logging.Formatter) -> None:
    line = formatter.format(_record("got token %s with header Authorization: %s", TOKEN, BEARER))
    assert TOKEN not in line
    assert TOKEN[11:] not in line
    assert "abc.def-ghi_jkl" not in line
    assert "ul_Secr3tTo" in line  # a recognisable prefix survives, for support
    assert "Bearer " in line


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_tokens_in_extra_fields_are_redacted(formatter: logging.Formatter) -> None:
    line = formatter.format(_record("request", path=f"/api/v1/users/{TOKEN}", auth=BEARER))
    assert TOKEN[11:] not in line
    assert "abc.def-ghi_jkl" not in line


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_tokens_in_tracebacks_are_redacted(formatter: logging.Formatter) -> None:
    try:
        raise RuntimeError(f"token {TOKEN} rejected")
    except RuntimeError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "RuntimeError" in line
    assert TOKEN[11:] not in line


def test_text_lines_escape_control_characters_in_message_and_fields() -> None:
    forged = "eve\r\nINFO    underlay.access: forged"
    record = _record("login by %s", forged, path="/a\x00b\x1b[31m")
    line = TextFormatter().format(record)
    assert not any(c in line for c in "\r\n\x00\x1b")  # one line, nothing raw
    assert "eve\\r\\nINFO    underlay.access: forged" in line
    assert "path=/a\\x00b\\x1b[31m" in line


def test_text_tracebacks_keep_their_lines_but_escape_what_they_quote() -> None:
    try:
        raise ValueError("bad name 'x\x1b]0;pwned\x07'")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = TextFormatter().format(record)
    assert "\nTraceback" in line
    assert "\x1b" not in line and "\x07" not in line
    assert "x\\x1b]0;pwned\\x07" in line


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "project vision: 3 blobs, user alice, ul_short"
    assert redact(text) == text


# -- a real server with --log-format json -----------------------------------------------------


def _exercise(url: str, rid: str) -> dict[str, str]:
    """Authenticated traffic that handles secrets; returns the secrets it saw."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"{url}/api/v1", headers=auth, timeout=30) as api:
        assert api.get("/projects", headers={"X-Request-ID": rid}).status_code == 200
        assert api.post("/projects", json={"name": "vision"}).status_code == 201
        password = "correct horse battery staple"
        user = {"name": "alice", "password": password}
        assert api.post("/users", json=user).status_code == 201
        minted = api.post("/tokens", json={"name": "t", "user": "alice"}).json()["token"]
        headers = {"Authorization": f"Bearer {minted}"}
        assert api.get("/users/me", headers=headers).status_code == 200
        login = {"user": "alice", "password": password}
        logged_in = api.post("/auth/login", json=login).json()["token"]
        assert api.put("/projects/vision/blobs", content=b"x" * 1000).status_code == 201
        wrong = "ul_wrong-" + uuid.uuid4().hex * 2
        refused = api.get("/projects", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401
        bad_login = {"user": "alice", "password": "wrong " + password}
        assert api.post("/auth/login", json=bad_login).status_code == 401
        # a query string can carry anything a client puts there: it stays out of the log
        in_query = "q-" + uuid.uuid4().hex + uuid.uuid4().hex[:20]  # within max_length 64
        assert api.get("/audit", params={"actor": in_query}).status_code == 200
    return {
        "query": in_query,
        "admin": ADMIN_TOKEN,
        "minted": minted,
        "login": logged_in,
        "wrong": wrong,
        "password": password,
    }


def test_server_json_logs_have_access_lines_and_no_secrets(tmp_path: Path) -> None:
    rid = "trace-" + uuid.uuid4().hex[:16]
    server = ServerProcess(tmp_path / "home", "--log-format", "json").start()
    try:
        secrets = _exercise(server.url, rid)
    finally:
        server.stop()
    output = server.output()

    entries = _json_lines(output)
    access = [e for e in entries if e.get("logger") == "underlay.access"]
    assert access, output
    mine = [e for e in access if e.get("request_id") == rid]
    assert len(mine) == 1, access
    assert mine[0]["method"] == "GET"
    assert mine[0]["path"] == "/api/v1/projects"
    assert mine[0]["status"] == 200
    statuses = {(e["method"], e["path"], e["status"]) for e in access}
    assert ("POST", "/api/v1/projects", 201) in statuses
    assert ("GET", "/api/v1/projects", 401) in statuses
    assert ("GET", "/api/v1/audit", 200) in statuses  # its query string is not logged
    assert not [e["path"] for e in access if "?" in e["path"]]
    assert all(len(e["request_id"]) >= 8 for e in access)

    for line in output.splitlines():
        for name, secret in secrets.items():
            assert secret not in line, f"{name} secret in server output: {line}"
            if name != "password":
                assert secret[11:] not in line, f"{name} secret body in server output: {line}"


def test_server_json_logs_redact_a_token_pasted_into_a_path(tmp_path: Path) -> None:
    """A token put where a name belongs still reaches the access log only redacted."""
    pasted = "ul_" + uuid.uuid4().hex * 2
    server = ServerProcess(tmp_path / "home", "--log-format", "json").start()
    try:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.get(f"{server.url}/api/v1/users/{pasted}", headers=auth, timeout=30)
        assert r.status_code == 404
    finally:
        server.stop()
    output = server.output()
    paths = [e.get("path", "") for e in _json_lines(output) if e.get("logger") == "underlay.access"]
    assert any(p.startswith("/api/v1/users/ul_") for p in paths), output
    assert pasted[11:] not in output

"""A real ``underlay up`` against slow, malformed and hostile HTTP clients, over raw sockets.

One server (text logs, small limits so the tests are quick) serves the whole module, once
with each HTTP parser (h11, and httptools where installed): slow
uploads must not starve the health and authenticated routes, a stalled body is cut off with
408 and leaves no partial file, a client that hangs up is a 499 without a traceback, framing
and header abuse is refused, idle connections are closed, and a path full of control
characters cannot forge a log line or reach a terminal raw.
"""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import ServerProcess, clean_env, run_cli
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.slow

MAX_UPLOADS = 4
SLOW_CLIENTS = 40
AUTH = f"Authorization: Bearer {ADMIN_TOKEN}\r\n"


class HardenedServer(ServerProcess):
    protocol = "auto"

    def extra_env(self) -> dict[str, str]:
        return {
            "UNDERLAY_SERVER__HTTP": self.protocol,
            "UNDERLAY_SERVER__MAX_CONCURRENT_UPLOADS": str(MAX_UPLOADS),
            "UNDERLAY_SERVER__BODY_READ_TIMEOUT_S": "2",
            "UNDERLAY_SERVER__HEADER_READ_TIMEOUT_S": "2",
            "UNDERLAY_SERVER__MAX_HEADER_COUNT": "50",
        }


PROTOCOLS = ["h11", "httptools"]  # httptools is a dependency: both parsers are always tested


@pytest.fixture(scope="module", params=PROTOCOLS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HardenedServer]:
    """The server on each HTTP parser (``server.http``): the same guards hold on both."""
    server = HardenedServer(tmp_path_factory.mktemp("hardening") / "home")
    server.protocol = request.param
    server.start()
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as c:
            assert c.post("/api/v1/projects", json={"name": "vision"}).status_code == 201
        yield server
    finally:
        server.stop()


def _partials(server: ServerProcess) -> list[Path]:
    folder = server.home / "blobs" / ".partial"
    return sorted(folder.glob("*.part")) if folder.exists() else []


def _connect(server: ServerProcess, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket times out)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _problem(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head.lower(), response
    problem: dict[str, object] = json.loads(body)
    return problem


def _upload_head(length: int, request_id: str = "") -> bytes:
    rid = f"X-Request-ID: {request_id}\r\n" if request_id else ""
    return (
        "PUT /api/v1/projects/vision/blobs?name=slow.bin HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\n{AUTH}{rid}"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _wait_for(predicate, what: str, within_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- slow and stalled uploads -------------------------------------------------------------------


def test_slow_uploads_neither_starve_other_routes_nor_hold_a_partial(live: HardenedServer) -> None:
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):  # each declares 1 GB, sends 10 bytes, then stalls
            sock = _connect(live)
            sock.sendall(_upload_head(10**9) + b"0123456789")
            slow.append(sock)

        # Meanwhile health and an authenticated route (a node agent's kind) still answer.
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.get(f"{live.url}/healthz", timeout=15).status_code == 200
        me = httpx.get(f"{live.url}/api/v1/users/me", headers=auth, timeout=15)
        assert me.status_code == 200, me.text
        nodes = httpx.get(f"{live.url}/api/v1/nodes", headers=auth, timeout=15)
        assert nodes.status_code == 200, nodes.text

        responses = [_read_all(sock) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    statuses = [_status(r) for r in responses]
    assert set(statuses) <= {408, 429}, statuses
    assert 408 in statuses, statuses  # admitted, then cut off when the body stalled
    refused = [r for r in responses if _status(r) == 429]
    assert refused, statuses  # the others were refused at once instead of queueing
    assert b"retry-after: 5" in refused[0].lower()
    assert "max_concurrent_uploads" in str(_problem(refused[0])["detail"])
    assert _partials(live) == []


def test_stalled_upload_body_gets_408_and_its_partial_is_removed(live: HardenedServer) -> None:
    with _connect(live) as sock:
        sock.sendall(_upload_head(10**9) + b"0123456789")
        _wait_for(lambda: _partials(live), "the upload's partial file")
        response = _read_all(sock)  # the server closes the connection after answering
    assert _status(response) == 408, response
    assert b"connection: close" in response.lower()
    assert "no request body received for 2 s" in str(_problem(response)["detail"])
    assert _partials(live) == []
    # the server is fine afterwards: a complete upload works
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    done = httpx.put(
        f"{live.url}/api/v1/projects/vision/blobs", content=b"whole", headers=auth, timeout=30
    )
    assert done.status_code == 201, done.text


def test_client_disconnect_mid_upload_is_499_without_traceback(live: HardenedServer) -> None:
    rid = "gone-" + uuid.uuid4().hex[:16]
    with _connect(live) as sock:
        sock.sendall(_upload_head(10**6, rid) + b"x" * 1000)
        _wait_for(lambda: _partials(live), "the upload's partial file")
    # the socket is closed: the client hung up mid-body

    def logged() -> bool:
        return any(rid in line for line in live.output().splitlines())

    _wait_for(logged, "the access line of the abandoned upload")
    _wait_for(lambda: not _partials(live), "the partial file to go")
    line = next(line for line in live.output().splitlines() if rid in line and "status=" in line)
    assert "status=499" in line, line
    assert line.startswith("INFO"), line
    output = live.output()
    assert "Traceback" not in output
    assert "ERROR" not in output
    assert "status=500" not in output


# -- framing, header limits, idle connections ----------------------------------------------------


def test_content_length_with_transfer_encoding_is_400(live: HardenedServer) -> None:
    with _connect(live) as sock:
        sock.sendall(
            b"POST /api/v1/projects HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"Content-Type: "
            b"application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'13\r\n{"name": "smuggle"}\r\n0\r\n\r\n'
        )
        response = _read_all(sock)  # and the connection is closed
    assert _status(response) == 400, response
    assert "Content-Length and Transfer-Encoding" in str(_problem(response)["detail"])
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    projects = httpx.get(f"{live.url}/api/v1/projects", headers=auth, timeout=15).json()
    assert "smuggle" not in {p["name"] for p in projects}


def test_too_many_header_fields_is_431(live: HardenedServer) -> None:
    many = b"".join(b"X-Filler-%d: a\r\n" % i for i in range(200))
    with _connect(live) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        response = _read_all(sock)
    assert _status(response) == 431, response
    assert "server.max_header_count" in str(_problem(response)["detail"])


def test_oversized_request_head_is_refused(live: HardenedServer) -> None:
    with _connect(live) as sock:  # one 40 KiB header, sent in one piece
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        response = _read_all(sock)
    assert _status(response) == 431, response
    assert "server.max_header_bytes" in str(_problem(response)["detail"])


def test_a_head_growing_past_the_limit_in_pieces_is_refused_before_it_ends(
    live: HardenedServer,
) -> None:
    """The server does not buffer an endless head: 4 KiB pieces of one header field, never
    ended, get a 4xx (h11: 400, httptools: 431) and the connection closed."""
    with _connect(live) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(64):  # 256 KiB at most; the limit is 16 KiB
            sock.sendall(b"a" * 4096)
            if select.select([sock], [], [], 0.05)[0]:  # answered: stop sending
                break
        response = _read_all(sock)
    assert response, "the connection was closed without an answer"
    assert _status(response) in (400, 431), response


@pytest.mark.parametrize(
    "sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "partial-head"]
)
def test_connection_without_a_complete_request_head_is_closed(
    live: HardenedServer, sent: bytes
) -> None:
    with _connect(live, timeout=30) as sock:
        sock.sendall(sent)
        assert _read_all(sock) == b""  # closed by the server, not by our socket timeout


def test_idle_keep_alive_connection_is_closed(live: HardenedServer) -> None:
    with _connect(live, timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = _read_all(sock)  # answered, then closed once idle
    assert _status(response) == 200


# -- proxies and log escaping ------------------------------------------------------------------


def test_x_forwarded_for_from_localhost_is_not_believed(live: HardenedServer) -> None:
    fake = {"Authorization": "Bearer ul_not-a-real-token-at-all", "X-Forwarded-For": "203.0.113.9"}
    refused = httpx.get(f"{live.url}/api/v1/projects/forwarded", headers=fake, timeout=15)
    assert refused.status_code == 401
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    entries = httpx.get(
        f"{live.url}/api/v1/audit", params={"outcome": "denied", "limit": 1000}, headers=auth
    ).json()
    mine = [e for e in entries if e["resource"] == "/api/v1/projects/forwarded"]
    assert [e["client"] for e in mine] == ["127.0.0.1"]
    assert "203.0.113.9" not in live.output()


HOSTILE = b"/api/v1/projects/a%0d%0aINFO%20underlay.access:%20forged%00nul%1b%5b31mred/blobs"
ESCAPES = b"/api/v1/projects/b%1b%5b31mred%1b%5d0;title%07%5bbold%5dx/blobs"  # colour, title


def _get(live: ServerProcess, path: bytes, request_id: str) -> int:
    with _connect(live) as sock:  # no token: refused (and audited, with the path)
        sock.sendall(
            b"GET "
            + path
            + b" HTTP/1.1\r\nHost: x\r\nX-Request-ID: "
            + request_id.encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        return _status(_read_all(sock))


def test_control_characters_in_a_path_are_escaped_in_the_access_log(live: HardenedServer) -> None:
    rid = "ctl-" + uuid.uuid4().hex[:16]
    assert 400 <= _get(live, HOSTILE, rid) < 500
    _wait_for(lambda: rid in live.output(), "the access line")
    output = live.output()
    for raw in ("\r", "\x00", "\x1b"):
        assert raw not in output
    lines = [line for line in output.splitlines() if rid in line]
    assert len(lines) == 1, lines
    assert "a\\r\\nINFO underlay.access: forged\\x00nul\\x1b[31mred" in lines[0]
    assert not any(line.startswith("INFO underlay.access: forged") for line in output.splitlines())


def test_escape_sequences_in_audited_paths_reach_the_terminal_escaped(live: HardenedServer) -> None:
    assert _get(live, ESCAPES, "esc-" + uuid.uuid4().hex[:16]) == 401
    env = clean_env(UNDERLAY_URL=live.url, UNDERLAY_TOKEN=ADMIN_TOKEN, COLUMNS="500")
    listed = run_cli("audit", "ls", "--outcome", "denied", "--limit", "1000", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert "b\\x1b[31mred\\x1b]0;title\\x07[bold]x" in listed.stdout  # no markup either


class BehindProxy(ServerProcess):
    def extra_env(self) -> dict[str, str]:
        return {"UNDERLAY_SERVER__TRUSTED_PROXIES": '["127.0.0.1"]'}


def test_x_forwarded_for_from_a_configured_proxy_is_believed(tmp_path: Path) -> None:
    fake = {"Authorization": "Bearer ul_not-a-real-token-at-all", "X-Forwarded-For": "203.0.113.9"}
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with BehindProxy(tmp_path / "home") as server:
        refused = httpx.get(f"{server.url}/api/v1/projects/proxied", headers=fake, timeout=15)
        assert refused.status_code == 401
        entries = httpx.get(
            f"{server.url}/api/v1/audit", params={"outcome": "denied"}, headers=auth, timeout=15
        ).json()
    mine = [e for e in entries if e["resource"] == "/api/v1/projects/proxied"]
    assert [e["client"] for e in mine] == ["203.0.113.9"]

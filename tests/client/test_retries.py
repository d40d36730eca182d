"""The SDK's retries (underlay.client.retries): calls go on through a server restart, and a
request that may have been acted on is never sent twice.

The restart tests drive a real ``underlay up`` process: SIGKILLed and started again on the same
port, or stopped with SIGSTOP so that a request reaches it and its answer never comes. What the
client sent is read from a real HTTP transport that records each request before passing it on.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.cli.conftest import ServerProcess
from tests.conftest import ADMIN_TOKEN, free_port
from underlay.client import Client
from underlay.client.retries import RetryPolicy, budget_from_env
from underlay.errors import InvalidInput, Unavailable

T = TypeVar("T")


class Recording(httpx.HTTPTransport):
    """httpx's own transport, noting each request it sends and calling ``on_failure`` with
    the error of each one that fails."""

    def __init__(self, on_failure: Callable[[httpx.TransportError], None] = lambda _: None):
        super().__init__()
        self.sent: list[tuple[str, str]] = []
        self.on_failure = on_failure

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        try:
            return super().handle_request(request)
        except httpx.TransportError as error:
            self.on_failure(error)
            raise

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, path in self.sent if m == method and path.endswith(suffix))


def _wait_until(check: Callable[[], object], what: str, within_s: float = 60) -> object:
    deadline = time.monotonic() + within_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "home").start(ready_within_s=120)
    try:
        with Client(process.url, ADMIN_TOKEN) as admin:
            admin.create_project("p")
            admin.create_experiment("p", "e")
        yield process
    finally:
        process.stop()


@pytest.mark.slow
def test_calls_made_while_the_server_restarts_succeed_once_it_is_back(
    server: ServerProcess, tmp_path: Path
) -> None:
    restarted: list[ServerProcess] = []

    def restart_on_first_refusal(error: httpx.TransportError) -> None:
        if isinstance(error, httpx.ConnectError) and not restarted:
            restarted.append(ServerProcess(server.home, port=server.port))
            threading.Thread(target=restarted[0].start, kwargs={"ready_within_s": 120}).start()

    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(b"w" * 300_000)
    transport = Recording(restart_on_first_refusal)
    client = Client(server.url, ADMIN_TOKEN, transport=transport, retry_budget_s=150)
    try:
        server.kill()  # the server is gone before the loop's first call
        run = client.create_run("p", "e", name="through-a-restart")  # POST: refused, retried
        assert restarted and client.retries > 0
        assert transport.count("POST", "/runs") > 1  # each try but the last was refused
        metrics = {"keys": ["loss"], "key": [0], "step": [0], "value": [0.5], "timestamp": [0]}
        batch = {"batch_id": "b" * 32, "metrics": metrics}
        for step in range(3):  # the loop goes on against the new server
            assert client.read_run("p", run.id).id == run.id
            logged = client.log_batch("p", run.id, batch)  # the same batch: written once
            assert (logged.points, logged.duplicate) == (1, step > 0)
        blob = client.upload_blob("p", artifact)
        assert client.download_blob("p", blob.digest) == artifact.read_bytes()
        runs = client.list_runs("p")
        assert [r.name for r in runs] == ["through-a-restart"]  # created once
    finally:
        client.close()
        for process in restarted:
            _wait_until(lambda p=process: p.proc is not None, "the restart to begin")
            process.stop()


@pytest.mark.slow
def test_a_post_whose_answer_was_lost_is_not_sent_again(server: ServerProcess) -> None:
    assert server.proc is not None
    transport = Recording()
    client = Client(server.url, ADMIN_TOKEN, transport=transport, timeout_s=1, retry_budget_s=30)
    try:
        server.proc.send_signal(signal.SIGSTOP)  # it takes the request in, and never answers
        try:
            with pytest.raises(Unavailable, match="may or may not have acted on it"):
                client.create_run("p", "e", name="maybe")
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert transport.count("POST", "/runs") == 1
        # once the server goes on it may act on the request it took in (or drop it, its client
        # being gone): either way there is at most the one run
        assert [r.name for r in client.list_runs("p")] in ([], ["maybe"])
        assert transport.count("POST", "/runs") == 1
    finally:
        client.close()


@pytest.mark.slow
def test_idempotent_calls_whose_answer_was_lost_are_sent_again(server: ServerProcess) -> None:
    """A GET, and the POSTs the server deduplicates: a tracking batch, ending a run."""
    assert server.proc is not None
    proc = server.proc

    def resume_after_a_timeout(error: httpx.TransportError) -> None:
        if isinstance(error, httpx.ReadTimeout):
            proc.send_signal(signal.SIGCONT)

    def stalled(call: Callable[[], T]) -> T:
        proc.send_signal(signal.SIGSTOP)  # the request goes in; its answer comes too late
        try:
            return call()
        finally:
            proc.send_signal(signal.SIGCONT)

    with Client(server.url, ADMIN_TOKEN) as admin:
        run = admin.create_run("p", "e", name="stalled")
    transport = Recording(resume_after_a_timeout)
    client = Client(server.url, ADMIN_TOKEN, transport=transport, timeout_s=1, retry_budget_s=60)
    metrics = {"keys": ["loss"], "key": [0], "step": [0], "value": [0.5], "timestamp": [0]}
    try:
        assert stalled(lambda: client.read_project("p")).name == "p"
        assert transport.count("GET", "/projects/p") >= 2
        logged = stalled(
            lambda: client.log_batch("p", run.id, {"batch_id": "c" * 32, "metrics": metrics})
        )
        assert logged.points == 1 and transport.count("POST", "/log") >= 2
        ended = stalled(lambda: client.end_run("p", run.id))
        assert ended.status == "finished" and transport.count("POST", "/end") >= 2
        history = client.metric_history("p", run.id, "loss")
        assert (history.step, history.value) == ([0], [0.5])  # stored once
        assert client.retries >= 3
    finally:
        client.close()


def test_retries_end_when_the_budget_is_spent() -> None:
    transport = Recording()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with Client(url, ADMIN_TOKEN, transport=transport, retry_budget_s=1) as client:
        with pytest.raises(Unavailable, match=r"cannot reach the server .*retried for up to 1 s"):
            client.create_project("x")
        assert len(transport.sent) > 1
    never = Recording()
    with Client(url, ADMIN_TOKEN, transport=never, retry_budget_s=0) as client:
        with pytest.raises(Unavailable, match="cannot reach the server"):
            client.list_projects()
        assert len(never.sent) == 1
        assert not client.ready()


def _response(status: int, headers: dict[str, str] | None = None, slug: str = "") -> httpx.Response:
    body = {"type": f"urn:underlay:problem:{slug}", "status": status} if slug else None
    return httpx.Response(status, headers=headers, json=body)


def test_which_answers_are_retried_and_after_how_long() -> None:
    policy = RetryPolicy(budget_s=30)
    get, post = policy.start("GET", None), policy.start("POST", None)
    assert get.after_response(_response(503, slug="unavailable"), True) is not None
    assert get.after_response(_response(502), True) is not None
    assert get.after_response(_response(504), True) is not None
    assert get.after_response(_response(500), True) is None
    assert get.after_response(_response(503, slug="integrity-failure"), True) is None
    assert get.after_response(_response(503), replayable=False) is None  # a stream half read
    assert post.after_response(_response(503, slug="unavailable"), True) is None
    marked = policy.start("POST", idempotent=True)  # a POST the server deduplicates
    assert marked.after_response(_response(503, slug="unavailable"), True) is not None
    # 429: only with Retry-After, and never sooner than it says
    assert get.after_response(_response(429), True) is None
    wait = get.after_response(_response(429, {"Retry-After": "3"}), True)
    assert wait is not None and wait >= 3
    assert get.after_response(_response(429, {"Retry-After": "31"}), True) is None  # past budget
    # a refused connection is retried for any method; a lost answer only for idempotent ones
    refused = httpx.ConnectError("refused")
    lost = httpx.RemoteProtocolError("Server disconnected without sending a response")
    assert post.after_error(refused, True) is not None
    assert post.after_error(lost, True) is None
    assert get.after_error(lost, True) is not None
    assert RetryPolicy(budget_s=0).start("GET", None).after_error(refused, True) is None


def test_waits_grow_with_jitter_up_to_the_cap() -> None:
    attempts = RetryPolicy(budget_s=1000, base_s=0.1, max_delay_s=2.0).start("GET", None)
    waits = [attempts.after_error(httpx.ConnectError("refused"), True) for _ in range(12)]
    assert all(w is not None for w in waits)
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2  # type: ignore[operator]
    assert all(1.0 <= w <= 2.0 for w in waits[5:])  # type: ignore[operator]
    assert len(set(waits)) > 1


def test_the_budget_comes_from_the_environment_or_is_refused() -> None:
    assert budget_from_env(30.0, {}) == 30.0
    assert budget_from_env(30.0, {"UNDERLAY_RETRY_BUDGET_S": "5"}) == 5.0
    assert budget_from_env(0.0, {"UNDERLAY_RETRY_BUDGET_S": "0"}) == 0.0
    for bad in ("soon", "-1", "1e9"):
        with pytest.raises(InvalidInput, match="UNDERLAY_RETRY_BUDGET_S must be a number"):
            budget_from_env(30.0, {"UNDERLAY_RETRY_BUDGET_S": bad})
    with pytest.raises(InvalidInput, match="retry_budget_s must be 0 to 86400"):
        Client("http://127.0.0.1:9", retry_budget_s=-1)

"""Webhook delivery end to end: a receiver on 127.0.0.1 that is down, a server restart, and
every alert arriving exactly once, signed, once the receiver is up."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer, free_port
from underlay.config import Settings
from underlay.identity import SYSTEM, read_project
from underlay.monitoring.alerts import raise_alert

SECRET = "a-webhook-secret-of-some-length"


class Receiver:
    """A webhook receiver on 127.0.0.1 recording every post (body and headers)."""

    def __init__(self, port: int, status: int = 204) -> None:
        self.port, self.status = port, status
        self.posts: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def fast(settings: Settings) -> Settings:
    settings.admin_token = ADMIN_TOKEN
    settings.alerts.delivery_interval_s = 0.05
    settings.alerts.retry_base_s = 0.05
    settings.alerts.retry_max_s = 0.2
    settings.alerts.anomaly_interval_s = 0
    settings.compute.local_agent = False
    return settings


@pytest.fixture
def port() -> Iterator[int]:
    yield free_port()


def _raise(server: LiveServer, kind: str, subject: str = "churn") -> int:
    with server.platform.unit(SYSTEM, "test", "test", audited=False) as u:
        project = read_project(u.session, "shop", SYSTEM)
        alert, _ = raise_alert(
            u.session,
            project_id=project.id,
            kind=kind,
            subject=subject,
            message=f"{kind} of {subject}",
            severity="error",
        )
        return alert.id


def test_alerts_raised_while_the_receiver_is_down_arrive_once_after_a_restart(
    settings: Settings, port: int
) -> None:
    fast(settings)
    first = LiveServer(settings).start()
    try:
        with first.client() as admin:
            admin.create_project("shop")
            hook = admin.add_webhook("shop", "ops", f"http://127.0.0.1:{port}/hook", secret=SECRET)
            assert hook.signed and "secret" not in hook.model_dump()
            ids = {_raise(first, "drift"), _raise(first, "latency"), _raise(first, "budget")}
            assert _raise(first, "drift") in ids  # a repeat: no second delivery

            def all_failed_twice() -> bool:
                rows = admin.webhook_deliveries("shop", "ops")
                return len(rows) == 3 and all(r.attempts >= 2 for r in rows)

            _wait("deliveries to fail while the receiver is down", all_failed_twice)
            rows = admin.webhook_deliveries("shop", "ops")
            assert {r.state for r in rows} == {"pending"}
            assert all("ConnectError" in r.last_error for r in rows)
    finally:
        first.stop()
    receiver = Receiver(port)
    second = LiveServer(settings).start()  # a new server process on the same database
    try:
        with second.client() as admin:

            def delivered() -> bool:
                rows = admin.webhook_deliveries("shop", "ops")
                return all(r.state == "delivered" for r in rows)

            _wait("every delivery after the restart", delivered)
            alerts = [json.loads(body)["alert"] for _, body in receiver.posts]
            assert sorted(a["id"] for a in alerts) == sorted(ids)  # each exactly once
            assert {a["kind"] for a in alerts} == {"drift", "latency", "budget"}
            for headers, body in receiver.posts:
                signed = headers["x-underlay-timestamp"].encode() + b"." + body
                mac = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
                assert headers["x-underlay-signature"] == f"sha256={mac}"
                assert headers["x-underlay-event"] == "alert"
            assert len({h["x-underlay-delivery"] for h, _ in receiver.posts}) == 3
            counts = admin.webhooks("shop")[0].deliveries
            assert counts == {"delivered": 3}
    finally:
        second.stop()
        receiver.close()


def test_a_receiver_that_refuses_is_retried_with_backoff_until_given_up(
    settings: Settings, port: int
) -> None:
    fast(settings).alerts.max_attempts = 3
    receiver = Receiver(port, status=500)
    server = LiveServer(settings).start()
    try:
        with server.client() as admin:
            admin.create_project("shop")
            admin.add_webhook("shop", "ops", f"http://127.0.0.1:{port}/hook")
            _raise(server, "drift")

            def given_up() -> list[Any]:
                return [r for r in admin.webhook_deliveries("shop", "ops") if r.state == "failed"]

            (row,) = _wait("the delivery to be given up", given_up)
            assert (row.attempts, row.last_error) == (3, "HTTP 500 from the receiver")
            assert len(receiver.posts) == 3
            assert "x-underlay-signature" not in receiver.posts[0][0]  # no secret: unsigned
            receiver.status = 200
            test = admin.test_webhook("shop", "ops", wait_s=30)
            assert test.state == "delivered" and test.event == "test"
            assert json.loads(receiver.posts[-1][1])["event"] == "test"
    finally:
        server.stop()
        receiver.close()


def test_backoff_doubles_up_to_its_ceiling() -> None:
    from underlay.config import AlertSettings
    from underlay.monitoring.webhooks import backoff_s

    config = AlertSettings(retry_base_s=2, retry_max_s=20)
    assert [backoff_s(n, config) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]

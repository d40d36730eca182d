"""Webhooks cannot be aimed into denied networks (the clouds' metadata services by default):
refused when created, by address or by a name resolving there, and refused again when a post
connects, so a name re-pointed after creation posts nothing."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import ADMIN_TOKEN, LiveServer, free_port
from tests.monitoring.test_webhook_delivery import Receiver
from underlay.config import Settings
from underlay.crypto import Keyring
from underlay.errors import InvalidInput
from underlay.monitoring import egress, webhooks
from underlay.monitoring.alert_models import AlertDelivery, Webhook
from underlay.monitoring.alerts import raise_alert
from underlay.monitoring.webhooks import WebhookSpec
from underlay.store import Database, Scope
from underlay.store.models import Project

LOOPBACK = egress.parse_networks(["127.0.0.0/8", "::1/128"])


def test_denied_networks_match_addresses_and_their_ipv4_mapped_forms() -> None:
    defaults = egress.parse_networks(Settings().alerts.webhook_denied_networks)
    assert str(egress.denied_by("169.254.169.254", defaults)) == "169.254.0.0/16"
    assert str(egress.denied_by("::ffff:169.254.169.254", defaults)) == "169.254.0.0/16"
    assert str(egress.denied_by("fd00:ec2::254", defaults)) == "fd00:ec2::254/128"
    assert egress.denied_by("127.0.0.1", defaults) is None  # loopback allowed by default
    assert egress.denied_by("10.1.2.3", defaults) is None
    with pytest.raises(ValueError, match="not a network in CIDR form"):
        Settings(alerts={"webhook_denied_networks": ["10.0.0.0/33"]})


def test_a_webhook_into_a_denied_network_is_refused_and_nothing_is_stored(
    db: Database, settings: Settings
) -> None:
    keyring = Keyring(settings)
    defaults = egress.parse_networks(settings.alerts.webhook_denied_networks)
    with db.session(Scope.everything()) as s:
        project = Project(name="shop")
        s.add(project)
        s.flush()
        for url in (
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:a9fe:a9fe]/computeMetadata/v1/",
            "https://[fe80::1]:8443/hook",
        ):
            spec = WebhookSpec("meta", url)
            with pytest.raises(InvalidInput, match="in denied network"):
                webhooks.create_webhook(s, keyring, project.id, spec, denied=defaults)
        # a name is resolved: localhost is loopback, denied when an operator denies loopback
        spec = WebhookSpec("local", "http://localhost:9/hook")
        with pytest.raises(InvalidInput, match=r"localhost \((127\.0\.0\.1|::1)\) is in denied"):
            webhooks.create_webhook(s, keyring, project.id, spec, denied=LOOPBACK)
        assert s.scalars(select(Webhook)).all() == []
        webhooks.create_webhook(s, keyring, project.id, spec, denied=defaults)  # allowed


def test_the_api_answers_a_problem_for_a_metadata_webhook(settings: Settings) -> None:
    settings.admin_token = ADMIN_TOKEN
    settings.compute.local_agent = False
    server = LiveServer(settings).start()
    try:
        with server.client() as admin:
            admin.create_project("shop")
        answer = httpx.post(
            f"{server.url}/api/v1/projects/shop/webhooks",
            json={"name": "meta", "url": "http://169.254.169.254/latest/meta-data/iam"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "169.254.0.0/16" in answer.json()["detail"]
        with server.client() as admin:
            assert admin.webhooks("shop") == []
    finally:
        server.stop()


def test_a_post_to_a_host_now_in_a_denied_network_never_connects(
    db: Database, settings: Settings
) -> None:
    receiver = Receiver(free_port())
    keyring = Keyring(settings)
    settings.alerts.retry_base_s = settings.alerts.retry_max_s = 0.01
    try:
        with db.session(Scope.everything()) as s:
            project = Project(name="shop")
            s.add(project)
            s.flush()
            url = f"http://localhost:{receiver.port}/hook"
            webhooks.create_webhook(s, keyring, project.id, WebhookSpec("ops", url))
            raise_alert(s, project_id=project.id, kind="drift", subject="churn", message="x")
        closed = settings.alerts.model_copy(
            update={"webhook_denied_networks": ["127.0.0.0/8", "::1/128"]}
        )
        assert webhooks.deliver_due(db, keyring, closed) == {
            "delivered": 0, "retry": 1, "failed": 0,
        }  # fmt: skip
        assert receiver.posts == []
        with db.session(Scope.everything()) as s:
            row = s.scalars(select(AlertDelivery)).one()
            assert "is in denied network" in row.last_error and row.state == "pending"
        time.sleep(0.05)  # the retry is due
        assert webhooks.deliver_due(db, keyring, settings.alerts)["delivered"] == 1
        assert len(receiver.posts) == 1
    finally:
        receiver.close()

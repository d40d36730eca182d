"""SDK methods for alert rules, silences and webhooks (alerts themselves: ``list_alerts`` and
``resolve_alert``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from underlay.errors import Unavailable
from underlay.monitoring.alert_schemas import (
    DeliveryRead,
    RuleRead,
    SilenceRead,
    WebhookRead,
)

if TYPE_CHECKING:
    import httpx


class AlertMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...

    def add_alert_rule(
        self,
        project: str,
        name: str,
        *,
        source: str,
        metric: str,
        comparison: str,
        threshold: float,
        severity: str = "warning",
        subject: str = "",
        cooldown_s: float = 0.0,
    ) -> RuleRead:
        """Raise a ``severity`` alert when ``metric`` of ``source`` compares true to
        ``threshold`` (e.g. ``source="latency", metric="p99_ms", comparison=">"``)."""
        body = {
            "name": name,
            "source": source,
            "metric": metric,
            "comparison": comparison,
            "threshold": float(threshold),
            "severity": severity,
            "subject": subject,
            "cooldown_s": float(cooldown_s),
        }
        result: RuleRead = self._one(
            RuleRead, "POST", f"/projects/{quote(project)}/alerts/rules", json=body
        )
        return result

    def alert_rules(self, project: str) -> list[RuleRead]:
        return self._many(RuleRead, f"/projects/{quote(project)}/alerts/rules")

    def remove_alert_rule(self, project: str, name: str) -> None:
        self._request("DELETE", f"/projects/{quote(project)}/alerts/rules/{quote(name, safe='')}")

    def silence_alerts(
        self, project: str, kind: str, *, seconds: float, subject: str = "", reason: str = ""
    ) -> SilenceRead:
        """Record but do not deliver alerts of ``kind`` (about ``subject``) for ``seconds``."""
        body = {"kind": kind, "subject": subject, "seconds": float(seconds), "reason": reason}
        result: SilenceRead = self._one(
            SilenceRead, "POST", f"/projects/{quote(project)}/alerts/silences", json=body
        )
        return result

    def alert_silences(self, project: str) -> list[SilenceRead]:
        return self._many(SilenceRead, f"/projects/{quote(project)}/alerts/silences")

    def add_webhook(
        self,
        project: str,
        name: str,
        url: str,
        *,
        secret: str | None = None,
        min_severity: str = "warning",
        kinds: Sequence[str] = (),
    ) -> WebhookRead:
        """Post the project's alerts (of ``min_severity`` and up, of ``kinds`` if given) to
        ``url``, signed with ``secret`` when given."""
        body = {
            "name": name,
            "url": url,
            "secret": secret,
            "min_severity": min_severity,
            "kinds": list(kinds),
        }
        result: WebhookRead = self._one(
            WebhookRead, "POST", f"/projects/{quote(project)}/webhooks", json=body
        )
        return result

    def webhooks(self, project: str) -> list[WebhookRead]:
        return self._many(WebhookRead, f"/projects/{quote(project)}/webhooks")

    def remove_webhook(self, project: str, name: str) -> None:
        self._request("DELETE", f"/projects/{quote(project)}/webhooks/{quote(name, safe='')}")

    def webhook_deliveries(self, project: str, name: str) -> list[DeliveryRead]:
        path = f"/projects/{quote(project)}/webhooks/{quote(name, safe='')}/deliveries"
        return self._many(DeliveryRead, path)

    def test_webhook(self, project: str, name: str, *, wait_s: float = 0.0) -> DeliveryRead:
        """Queue a test post; with ``wait_s`` wait that long for it to be delivered (the
        delivery as it stands then: ``state`` pending means not yet, see ``last_error``)."""
        path = f"/projects/{quote(project)}/webhooks/{quote(name, safe='')}"
        row: DeliveryRead = self._one(DeliveryRead, "POST", f"{path}/test")
        deadline = time.monotonic() + wait_s
        while row.state == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)
            found = [d for d in self.webhook_deliveries(project, name) if d.id == row.id]
            if not found:
                raise Unavailable(f"test delivery {row.id} vanished (was the webhook removed?)")
            row = found[0]
        return row

"""SDK methods of monitoring: drift checks of a deployment, their stored reports, and its
performance from feedback."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class MonitoringMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...

    def check_drift(
        self,
        project: str,
        deployment: str,
        *,
        rows: int | None = None,
        last: str | None = None,
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        reference: str | None = None,
        target: str | None = None,
        columns: list[str] | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        min_rows: int | None = None,
        store: bool = True,
    ) -> dict[str, Any]:
        """Compare a window of the deployment's prediction log with its reference: the last
        ``rows`` rows (5,000 when no window is given), or ``last`` (``"1h"``), or
        ``since``/``until``. ``reference`` (``TABLE@VERSION``) replaces the one found
        through lineage; ``overrides`` maps a column to ``{"method", "threshold", "alpha",
        "kind"}``. Returns the check: ``state`` (``ok``, ``drift``, ``too_few_rows``),
        ``flagged`` and per column ``features``."""
        body: dict[str, Any] = {"store": store}
        for key, value in (
            ("rows", rows),
            ("last", last),
            ("since", _moment(since)),
            ("until", _moment(until)),
            ("reference", reference),
            ("target", target),
            ("columns", columns),
            ("overrides", overrides),
            ("min_rows", min_rows),
        ):
            if value is not None:
                body[key] = value
        url = f"/projects/{project}/deployments/{deployment}/drift"
        result: dict[str, Any] = self._request("POST", url, json=body).json()
        return result

    def drift_reports(
        self, project: str, deployment: str, *, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The deployment's stored drift reports, newest first."""
        url = f"/projects/{project}/deployments/{deployment}/drift"
        found: list[dict[str, Any]] = self._request("GET", url, params={"limit": limit}).json()
        return found

    def drift_report(self, project: str, deployment: str, report: int) -> dict[str, Any]:
        """One stored drift report."""
        url = f"/projects/{project}/deployments/{deployment}/drift/{report}"
        found: dict[str, Any] = self._request("GET", url).json()
        return found

    def deployment_performance(
        self,
        project: str,
        deployment: str,
        *,
        task: str = "classification",
        since: dt.datetime | str | None = None,
        until: dt.datetime | str | None = None,
        window_s: float | None = None,
        slice_by: str | None = None,
        prediction: str | None = None,
        score: str | None = None,
        min_rows: int | None = None,
    ) -> dict[str, Any]:
        """The deployment's performance from feedback labels: overall, per window of
        ``window_s`` seconds, per value of ``slice_by``; with the serving counters
        (``serving``: requests, errors, error rate, latency)."""
        params: dict[str, Any] = {"task": task}
        for key, value in (
            ("since", _moment(since)),
            ("until", _moment(until)),
            ("window_s", window_s),
            ("slice_by", slice_by),
            ("prediction", prediction),
            ("score", score),
            ("min_rows", min_rows),
        ):
            if value is not None:
                params[key] = value
        url = f"/projects/{project}/deployments/{deployment}/performance"
        found: dict[str, Any] = self._request("GET", url, params=params).json()
        return found


def _moment(value: dt.datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()

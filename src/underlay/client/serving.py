"""SDK methods of deployments: deploy, read, scale, roll, canary, promote, roll back, remove,
and predictions through the JSON route."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from underlay.serving.schemas import DeploymentEventRead, DeploymentRead, FeedbackRead

if TYPE_CHECKING:
    import httpx


class ServingMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...

    def deploy(self, project: str, name: str, model: str, **options: Any) -> DeploymentRead:
        """Deploy ``model`` (``NAME@ALIAS``, ``NAME@3``) as ``name``; ``options``: replicas,
        cpus, memory_mib, gpu_fraction, max_batch, max_wait_ms, limits, log_sample_rate."""
        body = {"name": name, "model": model, **options}
        result: DeploymentRead = self._one(
            DeploymentRead, "POST", f"/projects/{project}/deployments", json=body
        )
        return result

    def list_deployments(self, project: str) -> list[DeploymentRead]:
        return self._many(DeploymentRead, f"/projects/{project}/deployments")

    def read_deployment(self, project: str, name: str) -> DeploymentRead:
        result: DeploymentRead = self._one(
            DeploymentRead, "GET", f"/projects/{project}/deployments/{name}"
        )
        return result

    def update_deployment(self, project: str, name: str, **changes: Any) -> DeploymentRead:
        """``replicas=N`` scales; ``model="NAME@N"`` is a rolling update."""
        body = {k: v for k, v in changes.items() if v is not None}
        result: DeploymentRead = self._one(
            DeploymentRead, "PATCH", f"/projects/{project}/deployments/{name}", json=body
        )
        return result

    def scale_deployment(self, project: str, name: str, replicas: int) -> DeploymentRead:
        return self.update_deployment(project, name, replicas=replicas)

    def delete_deployment(self, project: str, name: str) -> None:
        self._request("DELETE", f"/projects/{project}/deployments/{name}")

    def start_canary(self, project: str, name: str, model: str, **policy: Any) -> DeploymentRead:
        url = f"/projects/{project}/deployments/{name}/canary"
        result: DeploymentRead = self._one(
            DeploymentRead, "POST", url, json={"model": model, **policy}
        )
        return result

    def promote_canary(self, project: str, name: str, reason: str = "") -> DeploymentRead:
        url = f"/projects/{project}/deployments/{name}/promote"
        result: DeploymentRead = self._one(DeploymentRead, "POST", url, json={"reason": reason})
        return result

    def rollback_canary(self, project: str, name: str, reason: str = "") -> DeploymentRead:
        url = f"/projects/{project}/deployments/{name}/rollback"
        result: DeploymentRead = self._one(DeploymentRead, "POST", url, json={"reason": reason})
        return result

    def deployment_events(self, project: str, name: str) -> list[DeploymentEventRead]:
        return self._many(DeploymentEventRead, f"/projects/{project}/deployments/{name}/events")

    def predict(
        self, project: str, name: str, records: list[Any], *, request_id: str | None = None
    ) -> dict[str, Any]:
        """The deployment's predictions for ``records`` (a list of row objects or lists):
        ``{"predictions": [...], "model_version": N, "request_id": "..."}``."""
        headers = {"X-Request-Id": request_id} if request_id else None
        url = f"/projects/{project}/deployments/{name}/predict"
        response = self._request("POST", url, json={"records": records}, headers=headers)
        result: dict[str, Any] = response.json()
        return result

    def send_feedback(self, project: str, name: str, labels: list[dict[str, Any]]) -> FeedbackRead:
        """Ground-truth labels for the deployment's requests: ``[{"request_id": "...",
        "label": 1}, ...]`` (``row`` for a row of a request of several rows). Labels of
        requests the prediction log did not sample are accepted and counted in ``unlogged``."""
        url = f"/projects/{project}/deployments/{name}/feedback"
        result: FeedbackRead = self._one(FeedbackRead, "POST", url, json={"labels": labels})
        return result

    def deployment_stats(self, project: str, name: str) -> dict[str, Any]:
        """The serving process's counters of the deployment (requests, latency, batches)."""
        stats: dict[str, Any] = self._request(
            "GET", f"/projects/{project}/deployments/{name}/stats"
        ).json()
        return stats

"""SDK methods of the retraining loop: a deployment's policy, its plan, its runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from underlay.monitoring.loop_schemas import PolicyRead, RunRead

if TYPE_CHECKING:
    import httpx


class RetrainMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...

    def set_retrain_policy(self, project: str, deployment: str, **policy: Any) -> PolicyRead:
        """Create or replace the policy (fields: :class:`~underlay.monitoring.loop_schemas.
        PolicySet`)."""
        url = f"/projects/{project}/deployments/{deployment}/retrain-policy"
        result: PolicyRead = self._one(PolicyRead, "PUT", url, json=policy)
        return result

    def retrain_policy(self, project: str, deployment: str) -> PolicyRead:
        url = f"/projects/{project}/deployments/{deployment}/retrain-policy"
        result: PolicyRead = self._one(PolicyRead, "GET", url)
        return result

    def retrain_plan(
        self, project: str, deployment: str, drift: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What the loop would do now, step by step (nothing is written)."""
        url = f"/projects/{project}/deployments/{deployment}/retrain-plan"
        plan: dict[str, Any] = self._request("POST", url, json={"drift": drift}).json()
        return plan

    def start_retrain(
        self,
        project: str,
        deployment: str,
        *,
        reason: str = "",
        drift: dict[str, Any] | None = None,
    ) -> RunRead:
        url = f"/projects/{project}/deployments/{deployment}/retrain-runs"
        body = {"reason": reason, "drift": drift}
        result: RunRead = self._one(RunRead, "POST", url, json=body)
        return result

    def retrain_runs(self, project: str, deployment: str) -> list[RunRead]:
        return self._many(RunRead, f"/projects/{project}/deployments/{deployment}/retrain-runs")

    def retrain_run(self, project: str, run_id: int) -> RunRead:
        result: RunRead = self._one(RunRead, "GET", f"/projects/{project}/retrain-runs/{run_id}")
        return result

    def approve_retrain(self, project: str, run_id: int) -> RunRead:
        url = f"/projects/{project}/retrain-runs/{run_id}/approve"
        result: RunRead = self._one(RunRead, "POST", url)
        return result

    def abandon_retrain(self, project: str, run_id: int) -> RunRead:
        url = f"/projects/{project}/retrain-runs/{run_id}/abandon"
        result: RunRead = self._one(RunRead, "POST", url)
        return result

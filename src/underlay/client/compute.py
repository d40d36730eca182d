"""SDK methods for compute: nodes, jobs, quotas, budgets, usage, and the agent protocol."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from underlay.compute.schemas import (
    AgentWork,
    AlertRead,
    AttemptEnded,
    JobRead,
    NodeRead,
    QuotaRead,
    UsageRead,
)
from underlay.errors import Unavailable
from underlay.schemas import TokenCreated

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel

TERMINAL = ("succeeded", "failed", "cancelled", "lost")


class ComputeMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...
        def _verified_download(self, path: str, what: str) -> bytes: ...

    # -- nodes -----------------------------------------------------------------------------

    def list_nodes(self) -> list[NodeRead]:
        return self._many(NodeRead, "/nodes")

    def cordon(self, node: str, reason: str = "cordoned by an operator") -> NodeRead:
        result: NodeRead = self._one(
            NodeRead, "POST", f"/nodes/{node}/cordon", json={"reason": reason}
        )
        return result

    def uncordon(self, node: str) -> NodeRead:
        result: NodeRead = self._one(NodeRead, "POST", f"/nodes/{node}/uncordon")
        return result

    # -- jobs ------------------------------------------------------------------------------

    def submit_job(self, project: str, command: list[str], **options: Any) -> JobRead:
        """Queue ``command``; options are the fields of :class:`JobCreate` (cpus, gpus, ...).

        The server validates them (an error comes back as ``InvalidInput``)."""
        body = {"command": command, **{k: v for k, v in options.items() if v is not None}}
        result: JobRead = self._one(JobRead, "POST", f"/projects/{project}/jobs", json=body)
        return result

    def list_jobs(
        self, project: str, *, state: list[str] | None = None, limit: int = 100
    ) -> list[JobRead]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._many(JobRead, f"/projects/{project}/jobs", params=params)

    def read_job(self, project: str, job_id: int) -> JobRead:
        result: JobRead = self._one(JobRead, "GET", f"/projects/{project}/jobs/{job_id}")
        return result

    def read_job_by_id(self, job_id: int) -> JobRead:
        """A job by its global id, whatever its project (``job.project`` names it); a job
        you cannot see is ``NotFound``, as a missing one is."""
        result: JobRead = self._one(JobRead, "GET", f"/jobs/{job_id}")
        return result

    def cancel_job(self, project: str, job_id: int) -> JobRead:
        result: JobRead = self._one(JobRead, "POST", f"/projects/{project}/jobs/{job_id}/cancel")
        return result

    def wait_job(
        self,
        project: str,
        job_id: int,
        *,
        timeout_s: float | None = None,
        poll_s: float = 0.2,
        on_change: Callable[[JobRead | None, JobRead], None] | None = None,
    ) -> JobRead:
        """Poll until the job ends (succeeded, failed or cancelled with no retry left).

        ``on_change(before, now)`` is called with the first state seen (``before`` None) and
        then each time the state differs from the last poll's. Past ``timeout_s`` it raises
        :class:`Unavailable` with ``extra["timed_out"]`` set (and the job's ``state``), so a
        caller can tell a time-out from an unreachable server."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: JobRead | None = None
        while True:
            job = self.read_job(project, job_id)
            if on_change is not None and (last is None or last.state != job.state):
                on_change(last, job)
            last = job
            if job.state in TERMINAL and not (  # a job failed before any attempt has no retry
                job.state in ("failed", "lost") and 0 < job.attempts <= job.max_retries
            ):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise Unavailable(
                    f"job {job_id} is still {job.state} after {timeout_s:g} s",
                    timed_out=True,
                    state=job.state,
                )
            time.sleep(poll_s)

    def job_logs(
        self, project: str, job_id: int, *, follow: bool = False, offset: int = 0
    ) -> Iterator[bytes]:
        path = f"/projects/{project}/jobs/{job_id}/logs"
        params = {"follow": follow, "offset": offset}
        timeout = None if follow else self._http.timeout
        with self._http.stream("GET", path, params=params, timeout=timeout) as response:
            if not response.is_success:
                response.read()
                from underlay.client.client import _raise_for_problem

                _raise_for_problem(response)
            yield from response.iter_bytes()

    def list_alerts(self, *, project: str | None = None, resolved: bool = False) -> list[AlertRead]:
        """Open alerts (resolved ones with ``resolved=True``), newest first."""
        params: dict[str, Any] = {"resolved": resolved}
        if project:
            params["project"] = project
        return self._many(AlertRead, "/alerts", params=params)

    def resolve_alert(self, alert_id: int) -> AlertRead:
        result: AlertRead = self._one(AlertRead, "POST", f"/alerts/{alert_id}/resolve")
        return result

    # -- quotas, budgets, usage ------------------------------------------------------------

    def set_quota(
        self, project: str, accelerator_type: str, guaranteed: int, borrow_limit: int | None = None
    ) -> QuotaRead:
        result: QuotaRead = self._one(
            QuotaRead,
            "PUT",
            f"/projects/{project}/quotas/{accelerator_type}",
            json={"guaranteed": guaranteed, "borrow_limit": borrow_limit},
        )
        return result

    def list_quotas(self, project: str) -> list[QuotaRead]:
        return self._many(QuotaRead, f"/projects/{project}/quotas")

    def set_budget(self, project: str, **limits: Any) -> dict[str, Any]:
        response = self._request("PUT", f"/projects/{project}/budget", json=limits)
        data: dict[str, Any] = response.json()
        return data

    def budget(self, project: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", f"/projects/{project}/budget").json()
        return data

    def usage(self, **filters: Any) -> list[UsageRead]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._many(UsageRead, "/usage", params=params)

    # -- the agent protocol ----------------------------------------------------------------

    def heartbeat(self, node: str, inventory: dict[str, Any]) -> AgentWork:
        result: AgentWork = self._one(AgentWork, "PUT", f"/nodes/{node}", json=inventory)
        return result

    def attempt_started(self, node: str, attempt_id: int, pid: int, started: float) -> None:
        self._request(
            "POST",
            f"/nodes/{node}/attempts/{attempt_id}/started",
            json={"pid": pid, "pid_started": started},
        )

    def attempt_ended(self, node: str, attempt_id: int, report: BaseModel | AttemptEnded) -> None:
        self._request(
            "POST", f"/nodes/{node}/attempts/{attempt_id}/ended", json=report.model_dump()
        )

    def create_agent_token(self, node: str) -> TokenCreated:
        """A token that can only speak for ``node``'s agent (global admins)."""
        result: TokenCreated = self._one(TokenCreated, "POST", f"/nodes/{node}/tokens")
        return result

    def attempt_workdir(self, node: str, attempt_id: int) -> bytes:
        """The working-folder snapshot of an attempt on ``node`` (agent tokens), verified."""
        path = f"/nodes/{node}/attempts/{attempt_id}/workdir"
        return self._verified_download(path, f"the working folder of attempt {attempt_id}")

    def append_logs(self, node: str, attempt_id: int, data: bytes, offset: int) -> None:
        self._request(
            "POST",
            f"/nodes/{node}/attempts/{attempt_id}/logs",
            params={"offset": offset},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

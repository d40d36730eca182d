"""SDK methods for experiment tracking: experiments, runs, batches of metrics, artifacts.

:func:`underlay.start_run` (in :mod:`underlay.client.tracking`) builds on these; use them
directly to read and search runs.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import TypeAdapter

from underlay.ml.schemas import (
    ArtifactRead,
    ExperimentRead,
    MetricHistory,
    RunComparison,
    RunEnvironment,
    RunLogged,
    RunRead,
)

_RUNS = TypeAdapter(list[RunRead])
_ARROW_STREAM = "application/vnd.apache.arrow.stream"


def _arrow_history(body: bytes) -> MetricHistory:
    import pyarrow as pa

    table = pa.ipc.open_stream(body).read_all()
    meta = table.schema.metadata or {}
    columns = {name: table.column(name).to_numpy().tolist() for name in table.column_names}
    return MetricHistory.model_validate(
        {
            "run_id": int(meta[b"run_id"]),
            "key": meta[b"key"].decode(),
            "total": int(meta[b"total"]),
            "step": columns["step"],
            "value": columns["value"],
            "timestamp": columns["timestamp"],
        }
    )


if TYPE_CHECKING:
    import httpx

    from underlay.schemas import BlobRead


class TrackingMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...
        def upload_blob(
            self,
            project: str,
            data: bytes | IO[bytes] | Iterable[bytes] | Path,
            *,
            name: str = ...,
            media_type: str = ...,
            digest: str | None = ...,
            progress: Callable[[int], None] | None = ...,
        ) -> BlobRead: ...
        def _iter_verified(
            self, path: str, what: str, digest: str | None = None, *, prefix: str = ""
        ) -> Iterator[bytes]: ...

    # -- experiments -------------------------------------------------------------------

    def create_experiment(self, project: str, name: str, description: str = "") -> ExperimentRead:
        body = {"name": name, "description": description}
        result: ExperimentRead = self._one(
            ExperimentRead, "POST", f"/projects/{project}/experiments", json=body
        )
        return result

    def list_experiments(self, project: str) -> list[ExperimentRead]:
        return self._many(ExperimentRead, f"/projects/{project}/experiments")

    # -- runs --------------------------------------------------------------------------

    def create_run(self, project: str, experiment: str, **fields: Any) -> RunRead:
        """Start a run; ``fields``: name, job_id, git_commit, environment, params, tags,
        inputs (``[{"kind": "table", "name": "sales", "version": 3}]``)."""
        body = {"experiment": experiment, **{k: v for k, v in fields.items() if v is not None}}
        result: RunRead = self._one(RunRead, "POST", f"/projects/{project}/runs", json=body)
        return result

    def read_run(self, project: str, run_id: int) -> RunRead:
        result: RunRead = self._one(RunRead, "GET", f"/projects/{project}/runs/{run_id}")
        return result

    def run_environment(self, project: str, run_id: int) -> str:
        path = f"/projects/{project}/runs/{run_id}/environment"
        result: RunEnvironment = self._one(RunEnvironment, "GET", path)
        return result.environment

    def list_runs(
        self,
        project: str,
        *,
        experiment: str | None = None,
        job_id: int | None = None,
        status: str | None = None,
        filter: str = "",
        order_by: str = "",
        limit: int = 1000,
    ) -> list[RunRead]:
        """Runs, newest first; ``filter``/``order_by`` are search expressions such as
        ``metrics.acc > 0.9 and params.lr = '0.01'`` and ``metrics.acc desc``."""
        params: dict[str, Any] = {"limit": limit}
        for name, value in (
            ("experiment", experiment),
            ("job_id", job_id),
            ("status", status),
            ("filter", filter or None),
            ("order_by", order_by or None),
        ):
            if value is not None:
                params[name] = value
        response = self._request("GET", f"/projects/{project}/runs", params=params)
        return _RUNS.validate_json(response.content)

    def compare_runs(self, project: str, run_ids: list[int]) -> RunComparison:
        path = f"/projects/{project}/runs/compare"
        result: RunComparison = self._one(RunComparison, "GET", path, params={"ids": run_ids})
        return result

    def end_run(
        self, project: str, run_id: int, status: str = "finished", error: str = ""
    ) -> RunRead:
        path = f"/projects/{project}/runs/{run_id}/end"
        # ending a run again with the status it has is a no-op: safe to send again
        result: RunRead = self._one(
            RunRead, "POST", path, json={"status": status, "error": error[:2000]}, idempotent=True
        )
        return result

    def delete_run(self, project: str, run_id: int) -> None:
        self._request("DELETE", f"/projects/{project}/runs/{run_id}")

    def add_run_inputs(self, project: str, run_id: int, inputs: list[dict[str, Any]]) -> RunRead:
        """Record dataset/table versions the run read: ``[{"kind", "name", "version"}]``."""
        path = f"/projects/{project}/runs/{run_id}/inputs"
        result: RunRead = self._one(RunRead, "POST", path, json={"inputs": inputs})
        return result

    def log_batch(self, project: str, run_id: int, body: dict[str, Any]) -> RunLogged:
        """Send one batch (see :class:`underlay.ml.schemas.RunLog`) as it is."""
        from pydantic_core import to_json

        path = f"/projects/{project}/runs/{run_id}/log"
        headers = {"Content-Type": "application/json"}
        # pydantic-core's encoder: several times faster than json.dumps on long columns
        # the server records each batch's id with its points: a batch sent again writes nothing
        result: RunLogged = self._one(
            RunLogged, "POST", path, content=to_json(body), headers=headers, idempotent=True
        )
        return result

    def metric_history(
        self, project: str, run_id: int, key: str, *, max_points: int | None = None
    ) -> MetricHistory:
        """The points of ``key`` in step order (at most ``max_points``, evenly spaced). They
        travel as an Arrow IPC stream: raw arrays, several times cheaper than JSON numbers."""
        params = {} if max_points is None else {"max_points": max_points}
        response = self._request(
            "GET",
            f"/projects/{project}/runs/{run_id}/metrics/{key}",
            params=params,
            headers={"Accept": f"{_ARROW_STREAM}, application/json;q=0.5"},
        )
        if response.headers.get("content-type", "").startswith(_ARROW_STREAM):
            return _arrow_history(response.content)
        return MetricHistory.model_validate_json(response.content)

    # -- artifacts ---------------------------------------------------------------------

    def log_artifact(
        self,
        project: str,
        run_id: int,
        local_path: str | Path,
        artifact_path: str | None = None,
    ) -> ArtifactRead:
        """Upload a file as an encrypted blob of the project and record it as the run's file
        ``artifact_path`` (default: the file's name)."""
        source = Path(local_path)
        if not source.is_file():
            from underlay.errors import InvalidInput

            raise InvalidInput(f"{str(source)[:200]!r} is not a file")
        path = artifact_path or source.name
        media_type = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        blob = self.upload_blob(project, source, name=source.name[:255])
        body = {"path": path, "digest": blob.digest, "size": blob.size, "media_type": media_type}
        result: ArtifactRead = self._one(
            ArtifactRead, "POST", f"/projects/{project}/runs/{run_id}/artifacts", json=body
        )
        return result

    def list_artifacts(self, project: str, run_id: int, prefix: str = "") -> list[ArtifactRead]:
        params = {"prefix": prefix} if prefix else {}
        return self._many(
            ArtifactRead, f"/projects/{project}/runs/{run_id}/artifacts", params=params
        )

    def iter_artifact(self, project: str, run_id: int, path: str) -> Iterator[bytes]:
        """Stream an artifact's bytes, checking them against the digest the run recorded."""
        found = [a for a in self.list_artifacts(project, run_id) if a.path == path]
        if not found:
            from underlay.errors import NotFound

            raise NotFound(f"run {run_id} has no artifact {path[:200]!r}")
        url = f"/projects/{project}/runs/{run_id}/artifacts/content"
        what = f"artifact {path!r} of run {run_id}"
        request_path = str(self._http.build_request("GET", url, params={"path": path}).url)
        return self._iter_verified(request_path, what, found[0].digest)

    def download_artifact(self, project: str, run_id: int, path: str) -> bytes:
        return b"".join(self.iter_artifact(project, run_id, path))

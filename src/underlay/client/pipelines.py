"""SDK methods for ETL pipelines: run one (here, with this client's permissions) and read the
records of runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.data.schemas import PipelineRunRead

if TYPE_CHECKING:
    import httpx

    from underlay.data.pipelines import Pipeline


class PipelineMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...

    def run_pipeline(
        self,
        project: str,
        pipeline: Pipeline | str | Path,
        *,
        job_id: int | None = None,
        engine: str = "local",
    ) -> PipelineRunRead:
        """Run ``pipeline`` (a :class:`~underlay.data.pipelines.Pipeline`, or the path of a
        YAML or Python file that declares one) in this process and return its record.

        The transforms run here (``engine="ray"``: as Ray Data tasks on the Ray cluster this
        process is connected to, see :mod:`underlay.data.pipeline_ray`); the server only
        records the run. A transform that fails gives a ``failed`` run (its ``error`` says
        why), not an exception; a spec that does not validate, or an input the caller cannot
        read, raises before any run starts."""
        from underlay.data.pipeline_runner import run
        from underlay.data.pipelines import load

        spec = pipeline if not isinstance(pipeline, (str, Path)) else load(Path(pipeline))
        return run(self, project, spec, job_id=job_id, engine=engine)  # type: ignore[arg-type]

    def create_pipeline_run(self, project: str, body: dict[str, Any]) -> PipelineRunRead:
        result: PipelineRunRead = self._one(
            PipelineRunRead, "POST", f"/projects/{project}/pipeline-runs", json=body
        )
        return result

    def finish_pipeline_run(
        self, project: str, run_id: int, body: dict[str, Any]
    ) -> PipelineRunRead:
        path = f"/projects/{project}/pipeline-runs/{run_id}/finish"
        result: PipelineRunRead = self._one(PipelineRunRead, "POST", path, json=body)
        return result

    def renew_pipeline_run_lease(self, project: str, run_id: int) -> PipelineRunRead:
        """Tell the server the run's runner is alive (Conflict once the run has ended)."""
        path = f"/projects/{project}/pipeline-runs/{run_id}/lease"
        result: PipelineRunRead = self._one(PipelineRunRead, "POST", path)
        return result

    def list_pipeline_runs(
        self,
        project: str,
        pipeline: str | None = None,
        *,
        job_id: int | None = None,
        limit: int = 100,
    ) -> list[PipelineRunRead]:
        params: dict[str, Any] = {"limit": limit}
        if pipeline is not None:
            params["pipeline"] = pipeline
        if job_id is not None:
            params["job_id"] = job_id
        return self._many(PipelineRunRead, f"/projects/{project}/pipeline-runs", params=params)

    def read_pipeline_run(self, project: str, run_id: int) -> PipelineRunRead:
        path = f"/projects/{project}/pipeline-runs/{run_id}"
        result: PipelineRunRead = self._one(PipelineRunRead, "GET", path)
        return result

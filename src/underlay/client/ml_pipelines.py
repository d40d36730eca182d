"""SDK methods for ML pipelines: run one (steps as jobs, or here) and read the records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.ml.pipelines.schemas import RunRead, StepRead

if TYPE_CHECKING:
    import httpx

    from underlay.ml.pipelines.dsl import Pipeline


class MLPipelineMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...

    def run_ml_pipeline(
        self,
        project: str,
        pipeline: Pipeline | str | Path,
        *,
        params: dict[str, Any] | None = None,
        local: bool = False,
        job_env: dict[str, str] | None = None,
        on_event: Callable[[str], None] | None = None,
        timeout_s: float | None = None,
    ) -> RunRead:
        """Run an ML pipeline (a :class:`~underlay.ml.pipelines.Pipeline`, or the path of a
        Python file that declares one) and return its record.

        Each step runs as a job on the scheduler (the folder of the pipeline's file is
        uploaded as the jobs' working folder), or in this process with
        ``local=True``. A step that fails gives a ``failed`` run, not an exception."""
        from underlay.ml.pipelines.loader import load
        from underlay.ml.pipelines.runner import Driver

        file: Path | None = None
        if isinstance(pipeline, (str, Path)):
            file = Path(pipeline)
            pipeline = load(file)
        digest = None
        if not local and file is not None:
            digest = self._upload_folder(project, file.resolve().parent)
        driver = Driver(
            self,  # type: ignore[arg-type]
            project,
            pipeline,
            file=file,
            local=local,
            workdir_digest=digest,
        )
        return driver.run(
            params or {}, job_env=job_env or {}, on_event=on_event, timeout_s=timeout_s
        )

    def _upload_folder(self, project: str, folder: Path) -> str:
        """Pack ``folder`` (less ``.underlayignore``) as the step jobs' working folder."""
        from underlay.cli import workdir

        data = workdir.pack(workdir.select(folder), lambda _n: None)
        blob = self.upload_blob(  # type: ignore[attr-defined]
            project, data, name="workdir.tar.gz", media_type="application/gzip"
        )
        return str(blob.digest)

    def create_ml_run(self, project: str, body: dict[str, Any]) -> RunRead:
        result: RunRead = self._one(
            RunRead, "POST", f"/projects/{project}/ml-pipeline-runs", json=body
        )
        return result

    def finish_ml_run(self, project: str, run_id: int, body: dict[str, Any]) -> RunRead:
        path = f"/projects/{project}/ml-pipeline-runs/{run_id}/finish"
        result: RunRead = self._one(RunRead, "POST", path, json=body)
        return result

    def list_ml_runs(
        self, project: str, pipeline: str | None = None, *, limit: int = 100
    ) -> list[RunRead]:
        params: dict[str, Any] = {"limit": limit}
        if pipeline is not None:
            params["pipeline"] = pipeline
        return self._many(RunRead, f"/projects/{project}/ml-pipeline-runs", params=params)

    def read_ml_run(self, project: str, run_id: int) -> RunRead:
        result: RunRead = self._one(
            RunRead, "GET", f"/projects/{project}/ml-pipeline-runs/{run_id}"
        )
        return result

    def create_ml_step(self, project: str, run_id: int, body: dict[str, Any]) -> StepRead:
        path = f"/projects/{project}/ml-pipeline-runs/{run_id}/steps"
        result: StepRead = self._one(StepRead, "POST", path, json=body)
        return result

    def read_ml_step(self, project: str, run_id: int, key: str) -> StepRead:
        path = f"/projects/{project}/ml-pipeline-runs/{run_id}/steps/{key}"
        result: StepRead = self._one(StepRead, "GET", path)
        return result

    def start_ml_step(
        self, project: str, run_id: int, key: str, job_id: int | None = None
    ) -> StepRead:
        path = f"/projects/{project}/ml-pipeline-runs/{run_id}/steps/{key}/start"
        result: StepRead = self._one(StepRead, "POST", path, json={"job_id": job_id})
        return result

    def finish_ml_step(self, project: str, run_id: int, key: str, body: dict[str, Any]) -> StepRead:
        path = f"/projects/{project}/ml-pipeline-runs/{run_id}/steps/{key}/finish"
        result: StepRead = self._one(StepRead, "POST", path, json=body)
        return result

"""What a run records beyond metrics: its environment, git commit, job, inputs (lineage) and
system metrics; artifacts shared between runs; deletion; downsampled history; audit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import underlay
from tests.conftest import LiveServer
from underlay.client import Client
from underlay.client.sysmetrics import Sampler
from underlay.compute.inventory import AcceleratorInfo
from underlay.errors import Conflict, NotFound


@pytest.fixture
def project(admin: Client) -> str:
    admin.create_project("p")
    return "p"


class OneGpu:
    """The NVML seam (a probe): one GPU at 50 % and 120 W, as NvmlProbe would report it."""

    def probe(self) -> list[AcceleratorInfo]:
        return [
            AcceleratorInfo(
                index=0,
                uuid="GPU-1",
                vendor="nvidia",
                type="A100",
                memory_mib=40960,
                memory_used_mib=1024,
                utilization=0.5,
                power_watts=120.0,
            )
        ]


def test_system_metrics_sample_cpu_memory_and_gpus() -> None:
    figures = Sampler(OneGpu()).sample()
    assert 0 <= figures["system/cpu_percent"] <= 100 * 1024
    assert 0 < figures["system/memory_percent"] <= 100
    assert figures["system/gpu0/utilization_percent"] == 50.0
    assert figures["system/gpu0/power_w"] == 120.0
    assert figures["system/gpu0/memory_used_mb"] == 1024.0


def test_run_records_environment_commit_inputs_and_system_metrics(
    admin: Client, project: str, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    admin.push_dataset(project, "images", tmp_path / "data")
    inputs = [{"kind": "dataset", "name": "images", "version": 1}]
    with underlay.start_run(
        project,
        "e",
        client=admin,
        inputs=inputs,
        system_metrics=True,
        system_metrics_interval_s=0.05,
    ) as run:
        import time

        deadline = time.monotonic() + 30
        while "system/cpu_percent" not in run._keys and time.monotonic() < deadline:
            time.sleep(0.05)
    info = admin.read_run(project, run.id)
    assert [(i.kind, i.name, i.version) for i in info.inputs] == [("dataset", "images", 1)]
    assert info.metrics["system/cpu_percent"].step >= 0
    assert info.git_commit is not None and len(info.git_commit) == 40  # tests run in a checkout
    assert "pydantic==" in admin.run_environment(project, run.id)
    graph = admin.lineage(project, "run", str(run.id), direction="upstream")
    assert [(e.src.kind, e.src.id, e.relation) for e in graph.edges] == [
        ("dataset_version", "images@1", "input")
    ]
    with pytest.raises(NotFound, match="dataset 'images' has no version 2"):
        admin.create_run(project, "e", inputs=[{"kind": "dataset", "name": "images", "version": 2}])


def test_killed_on_keyboard_interrupt_and_ended_runs_take_nothing(
    admin: Client, project: str, tmp_path: Path
) -> None:
    with pytest.raises(KeyboardInterrupt), underlay.start_run(project, "e", client=admin) as run:
        raise KeyboardInterrupt
    assert admin.read_run(project, run.id).status == "killed"
    (tmp_path / "f.txt").write_text("late")
    with pytest.raises(Conflict, match="is killed: nothing more can be logged"):
        admin.log_artifact(project, run.id, tmp_path / "f.txt")


def test_shared_artifact_blob_survives_deleting_one_run_and_deletion_is_audited(
    admin: Client, project: str, tmp_path: Path
) -> None:
    (tmp_path / "model.bin").write_bytes(b"same bytes")
    with underlay.start_run(project, "e", client=admin) as first:
        art = first.log_artifact(tmp_path / "model.bin")
    with underlay.start_run(project, "e", client=admin) as second:
        second.log_artifact(tmp_path / "model.bin", "copy/model.bin")
    admin.delete_run(project, first.id)
    assert admin.read_blob(project, art.digest).size == 10  # the second run still holds it
    assert admin.download_artifact(project, second.id, "copy/model.bin") == b"same bytes"
    (entry,) = admin.list_audit(action="run.delete")
    assert entry.resource == f"project:p/run:{first.id}" and entry.outcome == "ok"
    assert admin.list_audit(action="run.artifact.read")
    admin.delete_run(project, second.id)
    with pytest.raises(NotFound):
        admin.read_blob(project, art.digest)


def test_history_downsampled(admin: Client, project: str) -> None:
    with underlay.start_run(project, "e", client=admin) as run:
        run.log_batch("x", [float(i) for i in range(1000)])
    full = admin.metric_history(project, run.id, "x")
    assert full.total == 1000 and full.step == list(range(1000))
    small = admin.metric_history(project, run.id, "x", max_points=11)
    assert small.total == 1000 and small.step == [round(i * 999 / 10) for i in range(11)]
    assert len(small.value) == 11
    with pytest.raises(NotFound, match="has no metric 'y'"):
        admin.metric_history(project, run.id, "y")


@pytest.mark.slow
def test_a_run_inside_a_job_attaches_to_it(admin: Client, server: LiveServer) -> None:
    admin.create_project("p")
    src = str(Path(underlay.__file__).resolve().parents[1])
    script = (
        "import underlay\n"
        "with underlay.start_run('p', 'in-job') as run:\n"
        "    run.log(step=0, acc=0.5)\n"
        "print('RUN', run.id)\n"
    )
    job = admin.submit_job("p", [sys.executable, "-c", script], env={"PYTHONPATH": src})
    state = admin.wait_job("p", job.id, timeout_s=120).state
    log = b"".join(admin.job_logs("p", job.id)).decode()
    assert state == "succeeded", log
    (found,) = admin.list_runs("p", job_id=job.id)
    assert found.job_id == job.id and found.metrics["acc"].value == 0.5


def test_deleting_a_project_deletes_its_runs_and_artifacts(
    admin: Client, project: str, tmp_path: Path
) -> None:
    (tmp_path / "w.bin").write_bytes(b"weights")
    with underlay.start_run(project, "e", client=admin) as run:
        run.log_batch("loss", [1.0, 0.5])
        run.log_artifact(tmp_path / "w.bin")
    admin.delete_project(project)
    admin.create_project(project)  # a new project of the same name inherits nothing
    assert admin.list_runs(project) == [] and admin.list_experiments(project) == []
    with pytest.raises(NotFound):
        admin.read_run(project, run.id)

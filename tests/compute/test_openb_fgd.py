"""``benchmarks/openb_fgd.py``: openb replayed under the FGD artefact's protocol (a seeded
shuffle, one pod per round, nothing preemptible, the GPU nodes only). Nothing here asserts on
time or on the figures it prints."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.compute.test_cli_simulate import needs_traces
from underlay.compute.scheduler.snapshot import Request, Workload
from underlay.compute.simulator.trace import Trace, TraceJob

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "openb_fgd.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("openb_fgd", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trace(n: int) -> Trace:
    jobs = [
        TraceJob(
            Workload(
                f"p{i:03d}",
                "openb",
                Request(cpu_milli=1000, memory_mib=1024, gpus=1),
                priority=i % 4,
                submit_time=float(i // 3),  # three at a time, as creation times can be
                preemptible=i % 2 == 0,
            ),
            None,
        )
        for i in range(n)
    ]
    return Trace.of("t", jobs)


def test_a_shuffle_keeps_every_pod_once_one_per_round_equal_and_not_preemptible() -> None:
    fgd = _module()
    base = _trace(60)
    a, again, other = fgd.shuffled(base, 42), fgd.shuffled(base, 42), fgd.shuffled(base, 43)
    ids = [j.workload.id for j in a.jobs]
    assert sorted(ids) == [j.workload.id for j in base.jobs]
    assert ids != [j.workload.id for j in base.jobs]  # not creation order
    assert ids == [j.workload.id for j in again.jobs]  # seeded
    assert ids != [j.workload.id for j in other.jobs]
    assert [j.workload.submit_time for j in a.jobs] == [i * fgd.INTERVAL_S for i in range(60)]
    assert {(j.workload.priority, j.workload.preemptible) for j in a.jobs} == {(0, False)}
    assert {j.duration_s for j in a.jobs} == {None}  # pods hold their resources to the end
    by_id = {j.workload.id: j.workload.request for j in base.jobs}
    assert all(j.workload.request == by_id[j.workload.id] for j in a.jobs)


@needs_traces
def test_the_quick_run_replays_on_the_gpu_nodes_and_prints_the_published_figures() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "1", "--pods", "200"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("seed 42 ")]
    assert [line.split()[2] for line in lines] == ["default", "first-fit"]
    assert all("preemptions 0 " in line for line in lines)
    assert "FGD artefact FGD            298" in out
    assert "FGD artefact BestFit        445" in out
    assert "default leaves " in out and "fewer than our first-fit" in out

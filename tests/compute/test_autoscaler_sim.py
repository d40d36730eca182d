"""Autoscaling and spot in the simulator: groups grow and shrink in a replay, spot nodes are
lost at a seeded rate, and the report sets cost against JCT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from underlay.compute.simulator import simulate
from underlay.compute.simulator.autoscaling import AutoscaleSpec, parse_groups
from underlay.errors import InvalidInput


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """Two bursts of one-GPU jobs an hour apart: room for a group to shrink in between."""
    rows = ["id,project,submit_s,duration_s,gpus,preemptible"]
    for burst, start in enumerate((0, 3600)):
        rows += [f"b{burst}-{i},vision,{start + i},600,1,true" for i in range(6)]
    rows.append("firm,vision,10,300,1,false")
    path = tmp_path / "bursts.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def run(trace: Path, groups: str, **kw: object) -> dict[str, object]:
    spec = AutoscaleSpec(parse_groups(groups), boot_s=60.0, idle_s=300.0, **kw)  # type: ignore[arg-type]
    return simulate(str(trace), "none", "default", autoscale=spec, interval_s=10.0).as_dict()


def test_a_group_grows_for_the_bursts_and_shrinks_between_them(trace_file: Path) -> None:
    report = run(trace_file, "0-4x2xA100:price=3")
    scaled = report["autoscale"]
    assert isinstance(scaled, dict)
    assert report["finished"] == 13 and report["rejected"] == 0
    assert scaled["peak_nodes"] == 4  # 7 one-GPU jobs at once, 2 GPUs a node, at most 4
    assert scaled["terminations"] >= 4 and scaled["launches"] >= 8  # down and up again
    # billed from launch to termination at 3 an hour, fewer hours than four nodes throughout
    assert scaled["cost"] == pytest.approx(3.0 * scaled["node_hours"])
    assert scaled["node_hours"] < 4 * report["makespan_s"] / 3600  # type: ignore[operator]


def test_a_fixed_group_costs_more_and_waits_less_than_an_autoscaled_one(
    trace_file: Path,
) -> None:
    fixed = run(trace_file, "4-4x2xA100:price=3")
    scaled = run(trace_file, "0-4x2xA100:price=3")
    assert fixed["autoscale"]["cost"] > scaled["autoscale"]["cost"]  # type: ignore[index]
    assert fixed["avg_jct_s"] < scaled["avg_jct_s"]  # type: ignore[operator]  # boot delay


def test_spot_takes_preemptible_work_and_lost_spot_nodes_requeue_it(trace_file: Path) -> None:
    groups = "0-4x2xA100:spot:price=1,0-1x2xA100:price=3"
    lossy = run(trace_file, groups, spot_loss_per_hour=6.0)
    scaled = lossy["autoscale"]
    assert isinstance(scaled, dict)
    assert scaled["spot_losses"] > 0 and scaled["spot_node_hours"] > 0
    assert lossy["finished"] == 13  # every interrupted job ran again to the end
    again = run(trace_file, groups, spot_loss_per_hour=6.0)
    assert _stable(again) == _stable(lossy)  # seeded: the same losses at the same times
    calm = run(trace_file, groups)
    assert calm["autoscale"]["spot_losses"] == 0  # type: ignore[index]
    assert calm["avg_jct_s"] < lossy["avg_jct_s"]  # type: ignore[operator]


def _stable(report: dict[str, object]) -> dict[str, object]:
    """The report less its timings of this machine."""
    return {k: v for k, v in report.items() if k not in ("wall_s", "decide_ms_avg")}


def test_non_preemptible_work_never_runs_on_spot(tmp_path: Path) -> None:
    path = tmp_path / "firm.csv"
    path.write_text("id,submit_s,duration_s,gpus,preemptible\nfirm,0,60,1,false\n")
    report = run(path, "0-2x1xA100:spot:price=1")
    assert report["finished"] == 0 and report["unfinished"] == 1
    assert report["autoscale"]["launches"] == 0  # type: ignore[index]
    assert run(path, "0-2x1xA100:spot:price=1,0-1x1xA100:price=3")["finished"] == 1


def test_the_report_without_autoscaling_is_unchanged(trace_file: Path) -> None:
    report = simulate(str(trace_file), "4x2xA100", "default").as_dict()
    assert "autoscale" not in report


def test_bad_group_specs_are_refused_with_what_to_write() -> None:
    with pytest.raises(InvalidInput, match="MIN-MAXxGPUSxTYPE"):
        parse_groups("4x8xA100")
    with pytest.raises(InvalidInput, match="MIN 5 is above MAX 2"):
        parse_groups("5-2x8xA100")
    with pytest.raises(InvalidInput, match="unknown option"):
        parse_groups("0-2x8xA100:cheap")
    with pytest.raises(InvalidInput, match="needs node groups"):
        simulate("philly", "none", "default")


def underlay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "underlay.cli.main", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def test_the_cli_reports_cost_and_refuses_a_bad_spec_in_one_line(trace_file: Path) -> None:
    args = ["--trace", str(trace_file), "--cluster", "none", "--interval", "10"]
    done = underlay(*args, "--autoscale", "0-4x2xA100:price=3", "--boot", "60", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["autoscale"]["cost"] > 0
    table = underlay(*args, "--autoscale", "0-4x2xA100:spot:price=1", "--spot-loss-rate", "2")
    assert table.returncode == 0, table.stderr
    assert "spot nodes lost" in table.stdout and "cost of the groups' nodes" in table.stdout
    bad = underlay(*args, "--autoscale", "lots")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: autoscale group 'lots'")
    assert "Traceback" not in bad.stderr

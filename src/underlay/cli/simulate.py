"""``underlay simulate``: replay a job trace through the scheduling policy and print the measures.

The import is cheap (the simulator is imported inside the command). Any error is one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

TraceOpt = Annotated[
    str,
    typer.Option(
        "--trace",
        help="A built-in trace (philly, philly-runtime, openb) or a CSV file in our trace format.",
    ),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="COUNTxGPUSxTYPE[:cpu=N][:mem=GIB],... (e.g. 32x8xP100), openb, openb-gpu, or a "
        "node CSV. Default: the trace's own (philly: 32x8xP100, openb: openb).",
    ),
]
PolicyOpt = Annotated[
    str,
    typer.Option("--policy", help="default, fifo, fifo-backfill, first-fit or las."),
]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the Philly duration sampling.")]
TracesDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--traces-dir",
        envvar="UNDERLAY_TRACES_DIR",
        help="Folder with philly-derived/ and alibaba-gpu-v2023-openb/ (default: Philly from "
        "the package, openb from ../shared/data/traces of the repository).",
    ),
]
IntervalOpt = Annotated[
    float, typer.Option("--interval", help="Scheduling tick in seconds (0: at every event).")
]
OverheadOpt = Annotated[
    float,
    typer.Option("--restart-overhead", help="Seconds of work a preempted job loses on restart."),
]
EnergyOpt = Annotated[
    bool,
    typer.Option(
        "--energy-aware", metavar="", help="Prefer the accelerator type with the lowest power draw."
    ),
]
CarbonOpt = Annotated[
    str | None,
    typer.Option(
        "--low-carbon",
        help="Daily window HH:MM-HH:MM in which deferrable work runs (else it is held).",
    ),
]
AutoscaleOpt = Annotated[
    str | None,
    typer.Option(
        "--autoscale",
        help="Node groups that grow and shrink: MIN-MAXxGPUSxTYPE[:spot][:price=P][:cpu=N]"
        "[:mem=GIB], comma separated (e.g. 0-16x8xA100:price=20,0-16x8xA100:spot:price=7); "
        "--cluster none makes them the whole cluster.",
    ),
]
SpotLossOpt = Annotated[
    float,
    typer.Option("--spot-loss-rate", help="Spot reclaims per spot node-hour (seeded by --seed)."),
]
IdleOpt = Annotated[
    float, typer.Option("--idle", help="Seconds a node of a group is idle before it goes.")
]
BootOpt = Annotated[
    float, typer.Option("--boot", help="Seconds from a node's launch until it takes work.")
]
MaxPriceOpt = Annotated[
    float | None,
    typer.Option("--max-price", help="Cap on the hourly price of all the groups' nodes."),
]

SHOWN_SKIPS = 5
"""Skipped trace rows listed on stderr; the rest are counted."""

ROWS = (
    ("jobs", "jobs"),
    ("offered_load", "offered load (total)"),
    ("peak_week_load", "offered load, busiest week"),
    ("finished", "finished"),
    ("rejected", "rejected"),
    ("unfinished", "unfinished"),
    ("avg_jct_s", "avg JCT (s)"),
    ("median_jct_s", "median JCT (s)"),
    ("p95_jct_s", "p95 JCT (s)"),
    ("avg_queue_s", "avg queueing delay (s)"),
    ("makespan_s", "makespan (s)"),
    ("gpu_utilization", "GPU utilisation"),
    ("fragmentation", "fragmentation (free but unusable)"),
    ("unallocated_gpus", "unallocated GPUs after last arrival"),
    ("jain_fairness", "Jain's fairness (projects)"),
    ("preemptions", "preemptions"),
    ("energy_kwh", "energy (kWh)"),
    ("decide_ms_avg", "decide() per round (ms)"),
    ("wall_s", "replay wall time (s)"),
)
AUTOSCALE_ROWS = (
    ("cost", "cost of the groups' nodes"),
    ("node_hours", "node-hours"),
    ("spot_node_hours", "spot node-hours"),
    ("gpu_hours_provisioned", "GPU-hours of the groups' nodes"),
    ("provisioned_utilization", "utilisation of provisioned GPUs"),
    ("launches", "nodes launched"),
    ("terminations", "nodes terminated when idle"),
    ("spot_losses", "spot nodes lost"),
    ("peak_nodes", "most group nodes at once"),
)


def simulate(
    trace: TraceOpt,
    cluster: ClusterOpt = None,
    policy: PolicyOpt = "default",
    json_output: JsonOpt = False,
    seed: SeedOpt = 0,
    traces_dir: TracesDirOpt = None,
    interval: IntervalOpt = 60.0,
    restart_overhead: OverheadOpt = 60.0,
    energy_aware: EnergyOpt = False,
    low_carbon: CarbonOpt = None,
    autoscale: AutoscaleOpt = None,
    spot_loss_rate: SpotLossOpt = 0.0,
    idle: IdleOpt = 600.0,
    boot: BootOpt = 120.0,
    max_price: MaxPriceOpt = None,
) -> None:
    """Replay a job trace on a virtual cluster with a scheduling policy and print the measures."""
    from underlay.cli.progress import count_bar
    from underlay.errors import UnderlayError

    try:
        with count_bar(f"replay {Path(trace).name}: jobs ended") as progress:
            report = _run(
                trace,
                cluster,
                policy,
                seed,
                traces_dir,
                interval,
                restart_overhead,
                energy_aware,
                low_carbon,
                progress,
                _scaling(autoscale, spot_loss_rate, idle, boot, max_price),
            )
    except (UnderlayError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    _print_skipped(report)
    if json_output:
        print(json.dumps(report))
        return
    _table(report)


def _run(
    trace: str,
    cluster: str | None,
    policy: str,
    seed: int,
    traces_dir: Path | None,
    interval: float,
    restart_overhead: float,
    energy_aware: bool,
    low_carbon: str | None,
    progress: Callable[[int, int], None],
    scaling: Callable[[], Any],
) -> dict[str, Any]:
    from underlay.compute.simulator import simulate as run_simulation
    from underlay.compute.simulator.replay import parse_window
    from underlay.errors import InvalidInput

    if interval < 0 or restart_overhead < 0:
        raise InvalidInput("--interval and --restart-overhead must not be negative")
    overrides: dict[str, Any] = {}
    if energy_aware:
        overrides["energy_aware"] = True
    if low_carbon is not None:
        overrides["low_carbon_windows"] = (parse_window(low_carbon),)
    report = run_simulation(
        trace,
        cluster,
        policy,
        seed=seed,
        folder=traces_dir,
        interval_s=interval,
        restart_overhead_s=restart_overhead,
        overrides=overrides,
        progress=progress,
        autoscale=scaling(),
    )
    return report.as_dict()


def _scaling(
    groups: str | None, loss_rate: float, idle: float, boot: float, max_price: float | None
) -> Callable[[], Any]:
    """The autoscaling spec of the options, built (and checked) inside the error boundary."""

    def build() -> Any:
        from underlay.compute.simulator.autoscaling import AutoscaleSpec, parse_groups
        from underlay.errors import InvalidInput

        if groups is None:
            return None
        if min(loss_rate, idle, boot, max_price or 0.0) < 0:
            raise InvalidInput(
                "--spot-loss-rate, --idle, --boot and --max-price must not be negative"
            )
        return AutoscaleSpec(parse_groups(groups), boot, idle, loss_rate, max_price)

    return build


def _print_skipped(report: dict[str, Any]) -> None:
    """Say on stderr which trace rows were skipped (the first few) and why."""
    count = report["skipped_rows"]
    if not count:
        return
    from underlay.logs import escape_control

    shown = report["skipped"][:SHOWN_SKIPS]
    print(f"skipped {count} trace row(s) that could not be read:", file=sys.stderr)
    for row in shown:
        print(f"  line {row['line']}: {escape_control(row['reason'])}", file=sys.stderr)
    if count > len(shown):
        print(f"  ... and {count - len(shown)} more", file=sys.stderr)


def _table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{report['trace']} on {report['cluster']} with policy {report['policy']}"
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    weekly = report["offered_load_weekly"]
    report = {**report, "peak_week_load": max(weekly) if weekly else None}
    for key, label in ROWS:
        value = report[key]
        if value is None:
            text = "-"
        elif isinstance(value, float):
            text = f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"
        else:
            text = f"{value:,}"
        table.add_row(label, text)
    for key, label in AUTOSCALE_ROWS if report.get("autoscale") else ():
        table.add_row(label, _cell(report["autoscale"][key]))
    Console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return f"{value:,}"

"""The compute part of the settings (``Settings.compute``): executors, the scheduling loop,
node agents, sandboxes and the autoscaler's node groups. Part of :mod:`underlay.config`, which
re-exports every class here; kept apart so that neither file grows past what one reads at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class SimulatedAccelerator(BaseModel):
    """Accelerators a node declares without having them (tests, demos); shown as simulated."""

    type: str = Field(description="Accelerator type, e.g. A100.")
    count: int = Field(default=1, ge=1, le=64, description="How many on this node.")
    memory_mib: int = Field(default=81920, gt=0, description="Memory of each, in MiB.")
    idle_watts: float = Field(default=60.0, ge=0, description="Power draw when idle.")
    busy_watts: float = Field(default=400.0, ge=0, description="Power draw at full use.")


class NodeGroupSettings(BaseModel):
    """A pool of identical nodes the autoscaler grows and shrinks (docs/autoscaling.md)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="Group name.")
    cpus: int = Field(default=1, ge=1, le=1024, description="CPUs per node.")
    memory_mib: int = Field(default=2048, ge=16, description="Memory per node, in MiB.")
    accelerator_type: str | None = Field(default=None, description="Accelerator type, if any.")
    accelerators: int = Field(default=0, ge=0, le=64, description="Accelerators per node.")
    min_nodes: int = Field(default=0, ge=0, le=1000, description="Nodes kept at all times.")
    max_nodes: int = Field(default=1, ge=0, le=1000, description="Most nodes at once.")
    spot: bool = Field(default=False, description="Spot nodes: they take preemptible work only.")
    price_per_hour: float | None = Field(
        default=None, ge=0, description="Price of one node per hour (default: the provider's)."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of its nodes.")
    instance_type: str = Field(default="", description="Cloud instance type (aws provider).")


class AutoscalerSettings(BaseModel):
    provider: Literal["local", "aws"] = Field(
        default="local", description="'local': agents as processes here; 'aws': EC2 (untested)."
    )
    groups: list[NodeGroupSettings] = Field(
        default_factory=list, description="Node groups (JSON list); none: autoscaling is off."
    )
    interval_s: float = Field(default=5.0, gt=0, le=600, description="Seconds between steps.")
    idle_s: float = Field(default=300.0, ge=0, description="Idle this long, a node goes.")
    launch_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="A node not up (registered, not lost) this long after its launch goes.",
    )
    max_price_per_hour: float | None = Field(
        default=None, ge=0, description="Cap on the hourly price of all autoscaled nodes."
    )
    spot_discount: float = Field(
        default=0.3, gt=0, le=1, description="Spot price as a fraction of on-demand (local)."
    )
    aws_region: str = Field(default="", description="AWS region (aws provider).")
    aws_image_id: str = Field(default="", description="AMI with underlay installed (aws).")
    aws_subnet_id: str = Field(default="", description="Subnet of the instances (aws).")
    aws_security_group_ids: list[str] = Field(
        default_factory=list, description="Security groups of the instances (aws)."
    )

    @field_validator("groups")
    @classmethod
    def _groups_differ(cls, groups: list[NodeGroupSettings]) -> list[NodeGroupSettings]:
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"node group names must differ: {', '.join(names)}")
        for g in groups:
            if g.min_nodes > g.max_nodes:
                raise ValueError(f"group {g.name}: min_nodes is above max_nodes")
        return groups


class ComputeSettings(BaseModel):
    node_name: str | None = Field(
        default=None, description="Name of this machine's node (default: the host name)."
    )
    local_agent: bool = Field(
        default=True, description="Run a node agent for this machine inside `underlay up`."
    )
    policy: str = Field(default="default", description="Scheduling policy of the live loop.")
    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels of this machine's node, matched by job node selectors (JSON object, "
        'e.g. {"zone": "a", "gpu": "a100"}); the agent reports them with every heartbeat.',
    )
    loop_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between scheduling rounds when idle."
    )
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between node-agent heartbeats."
    )
    node_lost_after_s: float = Field(
        default=30.0, gt=0, description="A node silent this long is lost; its jobs requeue."
    )
    grace_s: float = Field(
        default=10.0, ge=0, le=3600, description="SIGTERM-to-SIGKILL grace on cancel/preempt."
    )
    simulated_accelerators: list[SimulatedAccelerator] = Field(
        default_factory=list,
        description="Declare accelerators this machine does not have (JSON list); "
        "marked simulated everywhere.",
    )
    max_temperature_c: float = Field(
        default=90.0, gt=0, description="An accelerator hotter than this is cordoned."
    )
    idle_gpu_after_s: float = Field(
        default=600.0, gt=0, description="A running job's GPU near 0% this long is flagged."
    )
    idle_gpu_utilization: float = Field(
        default=0.05, ge=0, le=1, description="Utilisation at or below which a GPU is idle."
    )
    prices: dict[str, float] = Field(
        default_factory=lambda: {"cpu": 0.04, "default": 2.0},
        description="Price per hour: 'cpu' per CPU core, an accelerator type (or 'default') "
        "per whole accelerator.",
    )
    currency: str = Field(default="USD", description="Currency of the price table.")
    grid_intensity_g_per_kwh: float = Field(
        default=400.0, ge=0, description="Grid carbon intensity, gCO2e per kWh."
    )
    grid_intensity_hourly: list[float] | None = Field(
        default=None,
        min_length=24,
        max_length=24,
        description="Optional intensity for each UTC hour 0-23 (overrides the flat figure).",
    )
    cpu_watts_per_core: float = Field(
        default=10.0, ge=0, description="CPU power estimate per busy core when RAPL is unreadable."
    )
    isolation: Literal["auto", "namespaces+user", "namespaces", "user", "none"] = Field(
        default="auto",
        description="How jobs are sandboxed: 'auto' picks the strongest mode this machine "
        "supports (see docs/security.md); 'none' runs them as the agent's own user.",
    )
    require_isolation: bool = Field(
        default=False,
        description="Refuse to run jobs on a node that cannot isolate them (for servers "
        "shared by several users).",
    )
    sandbox_uid: int | None = Field(
        default=None,
        ge=1,
        description="Run every job as this uid (root agents); default: one uid per project.",
    )
    sandbox_uid_base: int = Field(
        default=200_000, ge=1000, description="First uid of the per-project range (root agents)."
    )
    sandbox_uid_count: int = Field(
        default=100_000, ge=1, description="Size of the per-project uid range."
    )
    sandbox_hide: list[Path] = Field(
        default_factory=list,
        description="More paths jobs must not see (the home, the agent's run folder and the "
        "agent user's home are always hidden).",
    )
    sandbox_expose: list[Path] = Field(
        default_factory=list,
        description="Paths under a hidden one that jobs may read (the Python runtime always).",
    )
    executor: Literal["local", "ray"] = Field(
        default="local",
        description="How agents run jobs: 'local' as process trees on their machine, 'ray' on "
        "a Ray cluster (gangs of workers across nodes; see docs/scaling.md). Also "
        "UNDERLAY_EXECUTOR.",
    )
    ray_address: str | None = Field(
        default=None,
        description="GCS address (host:port) of the Ray cluster the 'ray' executor uses; "
        "default: the agent starts a one-node cluster bound to 127.0.0.1.",
    )
    ray_node_ip: str | None = Field(
        default=None,
        description="IP of the Ray node on the agent's machine that the agent connects "
        "through (default: the one Ray finds on this machine, the head where there are several).",
    )
    ray_temp_dir: Path | None = Field(
        default=None,
        description="Where the Ray cluster the agent starts keeps its sessions (keep it "
        "short: Ray's socket paths must fit in 107 bytes); default: /tmp/underlay-ray-<uid>.",
    )
    ray_worker_dir: Path | None = Field(
        default=None,
        description="Folder on every Ray node for the workers' run and working folders and "
        "logs (hidden from jobs); default: <home>/agent/<node>/ray-workers.",
    )
    sandbox_share: list[Path] = Field(
        default_factory=list,
        description="Folders every job may read and write at the same path (a shared scratch "
        "or dataset mount); what one project writes there another can read.",
    )
    autoscaler: AutoscalerSettings = Field(default_factory=AutoscalerSettings)

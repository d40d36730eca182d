"""Node groups and the provider interface the autoscaler launches and terminates nodes through.

A :class:`NodeGroup` is a pool of identical nodes (one shape, one price, spot or on-demand)
that the autoscaler grows between ``min_nodes`` and ``max_nodes``. A :class:`Provider` turns
a group into machines: :meth:`~Provider.launch`, :meth:`~Provider.terminate`,
:meth:`~Provider.list` and :meth:`~Provider.price`. Each instance runs one node agent that
registers under the instance's ``node`` name with the group's labels, so the server finds an
instance's node by name and never needs a table of its own: the provider's list is the
truth about machines, the nodes table the truth about agents.

Providers: :mod:`.local` (agents as local processes with simulated accelerators, for tests
and the demo) and :mod:`.aws` (EC2; not runnable here, see docs/autoscaling.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from underlay.compute.scheduler import WHOLE, Accelerator, Node
from underlay.compute.scheduler.constraints import ON_DEMAND_LABEL, SPOT_LABEL
from underlay.config import AutoscalerSettings

GROUP_LABEL = "underlay.io/node-group"
"""The label key every autoscaled node carries: the name of its group."""

InstanceState = Literal["pending", "running", "terminated", "reclaimed"]


@dataclass(frozen=True, slots=True)
class NodeGroup:
    """A pool of identical nodes. ``price_per_hour`` None asks the provider's :meth:`price`."""

    name: str
    cpu_milli: int
    memory_mib: int
    accelerator_type: str | None = None
    accelerators: int = 0
    accelerator_memory_mib: int = 81920
    min_nodes: int = 0
    max_nodes: int = 1
    spot: bool = False
    price_per_hour: float | None = None
    labels: tuple[str, ...] = ()
    instance_type: str = ""

    @property
    def node_labels(self) -> tuple[str, ...]:
        """What the group's agents report: its own labels, the group and spot or not."""
        extra = (f"{GROUP_LABEL}={self.name}", SPOT_LABEL if self.spot else ON_DEMAND_LABEL)
        return tuple(sorted({*self.labels, *extra}))

    def node(self, name: str, *, healthy: bool = True) -> Node:
        """An idle node of this group's shape, as the scheduler sees one."""
        accs = tuple(
            Accelerator(type=self.accelerator_type or "", memory_mib=self.accelerator_memory_mib)
            for _ in range(self.gpus)
        )
        return Node(
            name,
            self.cpu_milli,
            self.memory_mib,
            self.cpu_milli,
            self.memory_mib,
            accs,
            healthy,
            self.node_labels,
        )

    @property
    def gpus(self) -> int:
        return self.accelerators if self.accelerator_type else 0


@dataclass(frozen=True, slots=True)
class Instance:
    """One machine of a group: ``id`` is the provider's, ``node`` the name its agent registers
    under; ``launched_at`` in epoch seconds."""

    id: str
    group: str
    node: str
    state: InstanceState
    launched_at: float
    spot: bool = False


@dataclass(frozen=True)
class LaunchContext:
    """What a launched agent needs to reach the server: its URL and, per node name, an agent
    token that speaks for that node only (minted by the caller for each launch)."""

    server_url: str
    token_for: Callable[[str], str]
    extra_env: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    """Where nodes come from. ``supports_spot`` says whether spot groups may be configured."""

    name: str
    supports_spot: bool

    def launch(self, group: NodeGroup, count: int, context: LaunchContext) -> list[Instance]:
        """Start ``count`` instances of ``group``; returns them (state ``pending``)."""
        ...

    def terminate(self, ids: Sequence[str]) -> None:
        """Stop these instances (and whatever runs on them); unknown ids are ignored."""
        ...

    def list(self) -> list[Instance]:
        """Every instance this provider started that is not yet terminated, plus those lost
        to a spot reclaim since the last call (state ``reclaimed``, reported once)."""
        ...

    def price(self, group: NodeGroup) -> float:
        """Price per hour of one node of ``group`` (spot or on-demand as the group says)."""
        ...

    def close(self) -> None:
        """Release what the provider holds in this process (local instances end with it)."""
        ...


def group_price(provider: Provider, group: NodeGroup) -> float:
    """The group's configured price per hour, else the provider's."""
    return group.price_per_hour if group.price_per_hour is not None else provider.price(group)


def table_price(group: NodeGroup, prices: dict[str, float], spot_discount: float) -> float:
    """A group's hourly price from a price table like ``compute.prices`` ('cpu' per core, an
    accelerator type or 'default' per device), times ``spot_discount`` for a spot group."""
    per_gpu = prices.get(group.accelerator_type or "", prices.get("default", 0.0))
    price = group.gpus * per_gpu + group.cpu_milli / WHOLE * prices.get("cpu", 0.0)
    return price * (spot_discount if group.spot else 1.0)


def groups_of(settings: AutoscalerSettings) -> tuple[NodeGroup, ...]:
    """The configured node groups."""
    return tuple(
        NodeGroup(
            name=g.name,
            cpu_milli=g.cpus * 1000,
            memory_mib=g.memory_mib,
            accelerator_type=g.accelerator_type,
            accelerators=g.accelerators,
            min_nodes=g.min_nodes,
            max_nodes=g.max_nodes,
            spot=g.spot,
            price_per_hour=g.price_per_hour,
            labels=tuple(sorted(f"{k}={v}" for k, v in g.labels.items())),
            instance_type=g.instance_type,
        )
        for g in settings.groups
    )


def headroom_nodes(
    groups: tuple[NodeGroup, ...], present: dict[str, int], most: int | None = None
) -> tuple[Node, ...]:
    """Each group's nodes not launched (``max_nodes`` less those ``present``), as unhealthy
    nodes: the scheduler waits for hardware that exists but is down, and refuses only what no
    node could ever host."""
    return tuple(
        g.node(f"{g.name}/not-launched-{i}", healthy=False)
        for g in groups
        for i in range(max(0, g.max_nodes - present.get(g.name, 0)))
    )

"""Virtual clusters for the simulator: a compact spec, a node CSV, and quotas from weights.

A spec is one or more groups separated by commas, each ``COUNTxGPUSxTYPE`` with optional
``:cpu=CORES`` and ``:mem=GIB`` (defaults 64 cores, 512 GiB): ``32x8xP100``,
``16x8xA100:cpu=96,8x4xT4``, ``4x0:cpu=32`` (CPU-only nodes have no type). Anything else is a
path to a node CSV with the columns of the Alibaba openb node list
(``sn,cpu_milli,memory_mib,gpu,model``). Accelerator power comes from :data:`POWER`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from underlay.compute.scheduler.snapshot import Accelerator, Node, PowerModel, Quota
from underlay.errors import InvalidInput

POWER: dict[str, PowerModel] = {
    "H100": PowerModel(70.0, 700.0),
    "A100": PowerModel(50.0, 400.0),
    "A10": PowerModel(20.0, 150.0),
    "L4": PowerModel(16.0, 72.0),
    "T4": PowerModel(10.0, 70.0),
    "V100": PowerModel(35.0, 300.0),
    "V100M16": PowerModel(35.0, 300.0),
    "V100M32": PowerModel(35.0, 300.0),
    "P100": PowerModel(30.0, 250.0),
    # Alibaba does not disclose G2 and G3; assumed to be a V100-class and an A100-class board.
    "G2": PowerModel(35.0, 300.0),
    "G3": PowerModel(50.0, 400.0),
}
"""Board power per accelerator type (idle, full load), from vendor TDPs; used for energy."""

DEFAULT_POWER = PowerModel(40.0, 300.0)
GPU_MEMORY_MIB = {"H100": 81920, "A100": 81920, "T4": 15360, "P100": 16384, "V100M32": 32768}

_GROUP = re.compile(r"^(\d+)x(\d+)(?:x([A-Za-z0-9_.-]+))?((?::[a-z]+=\d+)*)$")


def parse_spec(spec: str) -> tuple[Node, ...]:
    """The nodes of a compact cluster spec (see the module docstring)."""
    nodes: list[Node] = []
    for group in spec.split(","):
        match = _GROUP.match(group.strip())
        if match is None:
            raise InvalidInput(
                f"cluster spec group {group.strip()!r} is not COUNTxGPUSxTYPE[:cpu=N][:mem=GIB] "
                f"(example: 32x8xA100 or 4x0:cpu=32)"
            )
        count, gpus, gpu_type, opts = match.groups()
        if int(gpus) and not gpu_type:
            raise InvalidInput(f"cluster spec group {group.strip()!r} has GPUs but no type")
        options = dict(o.split("=") for o in opts.split(":") if o)
        bad = sorted(set(options) - {"cpu", "mem"})
        if bad:
            raise InvalidInput(f"cluster spec option(s) {', '.join(bad)} unknown; use cpu= or mem=")
        cpu = int(options.get("cpu", 64)) * 1000
        mem = int(options.get("mem", 512)) * 1024
        for _ in range(int(count)):
            nodes.append(_node(f"node-{len(nodes):04d}", cpu, mem, int(gpus), gpu_type or ""))
    if not nodes:
        raise InvalidInput(f"cluster spec {spec!r} has no nodes")
    return tuple(nodes)


def load_node_csv(path: Path) -> tuple[Node, ...]:
    """Nodes from a CSV with ``sn,cpu_milli,memory_mib,gpu,model`` (the openb node list)."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read node file {path}: {exc.strerror or exc}") from exc
    nodes: list[Node] = []
    with handle:
        reader = csv.DictReader(handle)
        need = {"sn", "cpu_milli", "memory_mib", "gpu", "model"}
        if not need <= set(reader.fieldnames or ()):
            raise InvalidInput(f"{path}: expected the columns {','.join(sorted(need))}")
        for line, row in enumerate(reader, start=2):
            try:
                gpus = int(row["gpu"] or 0)
                nodes.append(
                    _node(
                        row["sn"], int(row["cpu_milli"]), int(row["memory_mib"]), gpus, row["model"]
                    )
                )
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"{path}:{line}: bad node row ({exc})") from exc
    if not nodes:
        raise InvalidInput(f"{path}: no nodes")
    return tuple(nodes)


def _node(name: str, cpu_milli: int, memory_mib: int, gpus: int, gpu_type: str) -> Node:
    if gpus < 0 or cpu_milli < 0 or memory_mib < 0:
        raise InvalidInput(f"node {name}: capacities must not be negative")
    power = POWER.get(gpu_type, DEFAULT_POWER)
    memory = GPU_MEMORY_MIB.get(gpu_type, 16384)
    accs = tuple(Accelerator(gpu_type, memory, power=power) for _ in range(gpus))
    return Node.idle(name, cpu_milli, memory_mib, accs)


def quotas_from_weights(
    nodes: Iterable[Node], weights: Iterable[tuple[str, float]]
) -> tuple[Quota, ...]:
    """Split each accelerator type's capacity between projects in proportion to ``weights``
    (largest remainder, so the guarantees add up to the capacity exactly)."""
    capacity: dict[str, int] = {}
    for node in nodes:
        for acc in node.accelerators:
            capacity[acc.type] = capacity.get(acc.type, 0) + 1
    positive = [(p, w) for p, w in weights if w > 0]
    total = sum(w for _, w in positive)
    if not positive or total <= 0:
        return ()
    quotas: list[Quota] = []
    for gpu_type, cap in sorted(capacity.items()):
        exact = [(p, cap * w / total) for p, w in positive]
        base = {p: int(x) for p, x in exact}
        left = cap - sum(base.values())
        for p, _ in sorted(exact, key=lambda e: (-(e[1] - int(e[1])), e[0]))[:left]:
            base[p] += 1
        quotas.extend(Quota(p, gpu_type, g) for p, g in sorted(base.items()))
    return tuple(quotas)

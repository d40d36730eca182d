"""What a node has: CPUs, memory and accelerators, found by probes; and whether each is healthy.

The node agent calls :func:`probe_node` on every heartbeat and sends the resulting
:class:`NodeInventory` to the server as JSON (:meth:`NodeInventory.to_dict`,
:meth:`NodeInventory.from_dict`).

Design decisions:

* **Probes are plugins, and a probe never breaks the inventory.** An accelerator probe is any
  object with a ``name`` and a ``probe() -> list[AcceleratorInfo]`` method
  (:class:`AcceleratorProbe`). NVIDIA GPUs come from :class:`NvmlProbe` (``nvidia-ml-py``,
  imported lazily: without the package or the driver it reports none); other vendors register
  a factory under the entry-point group ``underlay.accelerator_probes``, called with the
  :class:`~underlay.config.Settings`. A plugin that fails to load, to build or to probe is
  logged and skipped, so one broken vendor library cannot take a node's GPUs off the fleet.
* **Indexes stay put.** A device keeps the index its probe gave it (NVML's enumeration index,
  which a GPU that fell off the bus leaves as a hole), so placements stay valid while a
  device comes and goes. Only when two probes' indexes collide are the later probe's shifted
  past the earlier ones'; a node mixing vendors should address devices by ``uuid``. A probe
  that reports no uuid gets ``<probe>-<node>-<its index>``; a device another probe already
  reported (same uuid) is dropped. Probes run in a fixed order: NVML, plugins by
  entry-point name, simulated accelerators.
* **Simulated accelerators** (``compute.simulated_accelerators``, for tests and demos) are
  marked ``simulated`` everywhere and report no power reading (nothing is measured). Their
  utilisation is 0 unless the JSON file ``<home>/simulated-accelerators.json`` says otherwise
  (see :class:`SimulatedProbe`); the file is re-read on every probe, so a demo can change it
  while the agent runs.
* **Health** is judged by :func:`assess` (too hot, uncorrected ECC errors) and
  :func:`missing` (a device seen before that the probes no longer report); an unhealthy device
  is cordoned by the caller with the readable reason these return.
* **CPU energy** comes from RAPL (:class:`RaplReader`) where the kernel lets us read it;
  since CVE-2020-8694 ``energy_uj`` is usually root-only, so the ledger falls back to an
  estimate and labels it so.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import psutil

from underlay.compute.scheduler.constraints import parse_labels
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator
from underlay.errors import InvalidInput

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "underlay.accelerator_probes"
SIMULATED_STATE_FILE = "simulated-accelerators.json"
_MIB = 1024 * 1024


# -- what a probe reports -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceleratorInfo:
    """One accelerator as a probe sees it now.

    ``utilization`` is 0..1 (NVML's ``utilization.gpu``: the share of time a kernel ran).
    ``power_watts`` is the measured draw now (None when the device cannot tell);
    ``idle_watts``/``busy_watts`` are the power model used when nothing is measured
    (``busy_watts`` is the power limit on NVIDIA GPUs). ``ecc_errors`` counts volatile
    uncorrected ECC errors since the driver loaded.
    """

    index: int
    uuid: str
    vendor: str
    type: str
    memory_mib: int
    memory_used_mib: int = 0
    utilization: float = 0.0
    power_watts: float | None = None
    idle_watts: float | None = None
    busy_watts: float | None = None
    temperature_c: float | None = None
    ecc_errors: int = 0
    mig: bool = False
    simulated: bool = False

    def __post_init__(self) -> None:
        label = f"accelerator {self.index}"
        if self.index < 0:
            raise InvalidInput(f"{label}: index must not be negative, got {self.index}")
        if not self.type:
            raise InvalidInput(f"{label}: type must not be empty")
        if self.memory_mib < 0 or self.memory_used_mib < 0:
            raise InvalidInput(f"{label}: memory must not be negative")
        if not 0.0 <= self.utilization <= 1.0:
            raise InvalidInput(
                f"{label}: utilization is a fraction 0..1, got {self.utilization} "
                "(divide a percentage by 100)"
            )
        if self.ecc_errors < 0:
            raise InvalidInput(f"{label}: ecc_errors must not be negative")
        for name in ("power_watts", "idle_watts", "busy_watts"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInput(f"{label}: {name} must not be negative, got {value}")

    def label(self) -> str:
        """How messages name it: ``GPU 2 (A100, uuid GPU-…)``."""
        sim = ", simulated" if self.simulated else ""
        return f"GPU {self.index} ({self.type}{sim}, uuid {self.uuid})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AcceleratorInfo:
        """Read what :meth:`to_dict` wrote; unknown keys are ignored (a newer agent may send
        more), a missing or mistyped one is an :class:`InvalidInput`."""
        where = f"accelerator {data.get('index', '?')}"
        return cls(
            index=_get(data, "index", int, where),
            uuid=_get(data, "uuid", str, where),
            vendor=_get(data, "vendor", str, where, ""),
            type=_get(data, "type", str, where),
            memory_mib=_get(data, "memory_mib", int, where),
            memory_used_mib=_get(data, "memory_used_mib", int, where, 0),
            utilization=_get(data, "utilization", float, where, 0.0),
            power_watts=_get(data, "power_watts", float, where, None),
            idle_watts=_get(data, "idle_watts", float, where, None),
            busy_watts=_get(data, "busy_watts", float, where, None),
            temperature_c=_get(data, "temperature_c", float, where, None),
            ecc_errors=_get(data, "ecc_errors", int, where, 0),
            mig=_get(data, "mig", bool, where, False),
            simulated=_get(data, "simulated", bool, where, False),
        )


@dataclass(frozen=True, slots=True)
class NodeInventory:
    """A machine's capacity and load now, with its accelerators.

    ``cpu_count`` is the logical CPUs this process may use (its affinity), ``cpu_milli`` the
    same in thousandths; ``cpu_utilization`` is 0..1 over the whole machine since the previous
    probe (0 on the first). ``simulated`` is True when any accelerator is simulated.
    """

    name: str
    hostname: str
    cpu_count: int
    cpu_milli: int
    memory_mib: int
    cpu_utilization: float = 0.0
    accelerators: tuple[AcceleratorInfo, ...] = ()
    rapl_readable: bool = False
    isolation: str = "none"  # how the node's executor sandboxes jobs (its agent says)
    labels: tuple[str, ...] = ()  # "key=value", from compute.node_labels

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInput("node name must not be empty")
        if self.cpu_count < 0 or self.cpu_milli < 0 or self.memory_mib < 0:
            raise InvalidInput(f"node {self.name!r}: CPU and memory must not be negative")
        if not 0.0 <= self.cpu_utilization <= 1.0:
            raise InvalidInput(
                f"node {self.name!r}: cpu_utilization is a fraction 0..1, "
                f"got {self.cpu_utilization}"
            )
        indexes = [a.index for a in self.accelerators]
        if len(set(indexes)) != len(indexes):
            raise InvalidInput(f"node {self.name!r}: accelerator indexes repeat: {indexes}")

    @property
    def simulated(self) -> bool:
        return any(a.simulated for a in self.accelerators)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "accelerators"
        }
        out["accelerators"] = [a.to_dict() for a in self.accelerators]
        out["simulated"] = self.simulated
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeInventory:
        """Read what :meth:`to_dict` wrote (``simulated`` is derived, not read)."""
        if not isinstance(data, Mapping):
            raise InvalidInput("a node inventory is a JSON object")
        where = f"node {data.get('name', '?')!r}"
        accs = data.get("accelerators", [])
        if not isinstance(accs, list) or not all(isinstance(a, Mapping) for a in accs):
            raise InvalidInput(f"{where}: 'accelerators' must be a list of objects")
        return cls(
            name=_get(data, "name", str, where),
            hostname=_get(data, "hostname", str, where, ""),
            cpu_count=_get(data, "cpu_count", int, where),
            cpu_milli=_get(data, "cpu_milli", int, where),
            memory_mib=_get(data, "memory_mib", int, where),
            cpu_utilization=_get(data, "cpu_utilization", float, where, 0.0),
            accelerators=tuple(AcceleratorInfo.from_dict(a) for a in accs),
            rapl_readable=_get(data, "rapl_readable", bool, where, False),
            isolation=_get(data, "isolation", str, where, "none")[:32],
            labels=_labels(data, where),
        )


_MISSING = object()


def _labels(data: Mapping[str, Any], where: str) -> tuple[str, ...]:
    raw = data.get("labels", [])
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw) or len(raw) > 64:
        raise InvalidInput(f"{where}: 'labels' must be a list of at most 64 key=value strings")
    try:
        return parse_labels(raw)
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def _get(data: Mapping[str, Any], key: str, kind: type, where: str, default: Any = _MISSING) -> Any:
    """``data[key]`` checked against ``kind`` (JSON numbers: an int is a valid float; a bool
    is not a number); ``default`` when absent, or an InvalidInput naming the field."""
    if key not in data or (data[key] is None and default is None):
        if default is _MISSING:
            raise InvalidInput(f"{where}: '{key}' is required")
        return default
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise InvalidInput(f"{where}: '{key}' must be {_KIND_NAMES[kind]}, got {value!r}")


_KIND_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


# -- probes ---------------------------------------------------------------------------------


@runtime_checkable
class AcceleratorProbe(Protocol):
    """Finds one vendor's accelerators. ``probe`` may raise; :func:`probe_node` skips it then.

    Register a factory (a callable taking the :class:`~underlay.config.Settings` and
    returning a probe; a probe class whose constructor takes the settings will do) in the
    entry-point group ``underlay.accelerator_probes``::

        [project.entry-points."underlay.accelerator_probes"]
        amd = "my_package.rocm:RocmProbe"
    """

    name: str

    def probe(self) -> list[AcceleratorInfo]: ...


class NvmlProbe:
    """NVIDIA GPUs through NVML (``pip install 'underlay[nvidia]'``, i.e. ``nvidia-ml-py``).

    Without the package, without the driver, or with no GPU it reports none and never raises.
    A device whose handle cannot be read (fallen off the bus) is left out, so the caller sees
    it as gone. Readings a device does not support (power on some boards, ECC on consumer
    cards, utilisation under MIG) are reported as None or 0.
    """

    name = "nvidia"

    def probe(self) -> list[AcceleratorInfo]:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return []
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.debug("NVML unavailable: %s", exc)
            return []
        try:
            count = int(nvml.nvmlDeviceGetCount())
            found = []
            for index in range(count):
                try:
                    found.append(_nvml_device(nvml, index))
                except nvml.NVMLError as exc:
                    log.warning("NVML cannot read GPU %d: %s", index, exc)
            return found
        except nvml.NVMLError as exc:
            log.warning("NVML failed to list GPUs: %s", exc)
            return []
        finally:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()


def _nvml_device(nvml: Any, index: int) -> AcceleratorInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)

    def optional(call: Any, *args: Any) -> Any:
        try:
            return call(handle, *args)
        except nvml.NVMLError:
            return None  # not supported on this board or in this mode

    util = optional(nvml.nvmlDeviceGetUtilizationRates)
    power_mw = optional(nvml.nvmlDeviceGetPowerUsage)
    limit_mw = optional(nvml.nvmlDeviceGetEnforcedPowerLimit)
    temp = optional(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU)
    ecc = optional(
        nvml.nvmlDeviceGetTotalEccErrors,
        nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        nvml.NVML_VOLATILE_ECC,
    )
    mig = optional(nvml.nvmlDeviceGetMigMode)
    return AcceleratorInfo(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        vendor="nvidia",
        type=_gpu_type(_text(nvml.nvmlDeviceGetName(handle))),
        memory_mib=int(memory.total) // _MIB,
        memory_used_mib=int(memory.used) // _MIB,
        utilization=min(1.0, max(0.0, float(util.gpu) / 100.0)) if util is not None else 0.0,
        power_watts=float(power_mw) / 1000.0 if power_mw is not None else None,
        busy_watts=float(limit_mw) / 1000.0 if limit_mw is not None else None,
        temperature_c=float(temp) if temp is not None else None,
        ecc_errors=int(ecc) if ecc is not None else 0,
        mig=bool(mig is not None and int(mig[0]) == int(nvml.NVML_DEVICE_MIG_ENABLE)),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _gpu_type(name: str) -> str:
    """NVML's marketing name to the short type quotas and prices use:
    ``NVIDIA A100-SXM4-80GB`` -> ``A100``, ``NVIDIA H200`` -> ``H200``,
    ``NVIDIA GeForce RTX 4090`` -> ``RTX4090``."""
    words = name.replace("NVIDIA", "").replace("GeForce", "").replace("Tesla", "").split()
    if not words:
        return name or "unknown"
    if words[0] in {"RTX", "GTX", "Quadro"} and len(words) > 1:
        return words[0] + words[1].split("-")[0]
    return words[0].split("-")[0]


class SimulatedProbe:
    """Accelerators declared by configuration, for tests and demos; marked simulated.

    Each gets the uuid ``SIM-<node>-<i>`` (node: default the host name; stable across
    restarts) and the configured power
    model, and reports no measured power. By default each is idle (utilisation 0). The
    optional JSON file ``state_file`` (``<home>/simulated-accelerators.json`` in
    :func:`probe_node`) overrides readings per device, keyed by its position or uuid::

        {"0": 0.9, "SIM-n1-1": {"utilization": 0.5, "temperature_c": 95,
                                "ecc_errors": 1, "memory_used_mib": 1024, "gone": true}}

    A number is a utilisation; ``gone`` leaves the device out as if it had failed. An
    unreadable or malformed file is logged and ignored.
    """

    name = "simulated"

    def __init__(
        self,
        accelerators: Sequence[SimulatedAccelerator],
        node: str | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.accelerators = list(accelerators)
        self.node = node or socket.gethostname()
        self.state_file = state_file

    def probe(self) -> list[AcceleratorInfo]:
        state = self._state()
        out: list[AcceleratorInfo] = []
        position = 0
        for spec in self.accelerators:
            for _ in range(spec.count):
                uuid = f"SIM-{self.node}-{position}"
                override = state.get(uuid, state.get(str(position), {}))
                info = AcceleratorInfo(
                    index=position,
                    uuid=uuid,
                    vendor="simulated",
                    type=spec.type,
                    memory_mib=spec.memory_mib,
                    idle_watts=spec.idle_watts,
                    busy_watts=spec.busy_watts,
                    simulated=True,
                )
                position += 1
                if not override.get("gone", False):
                    out.append(_override(info, override))
        return out

    def _state(self) -> dict[str, dict[str, Any]]:
        if self.state_file is None or not self.state_file.exists():
            return {}
        try:
            raw = json.loads(self.state_file.read_text())
            if not isinstance(raw, dict):
                raise ValueError("the top level must be an object")
            return {
                str(k): ({"utilization": v} if isinstance(v, int | float) else dict(v))
                for k, v in raw.items()
            }
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring simulated accelerator state %s: %s", self.state_file, exc)
            return {}


def _override(info: AcceleratorInfo, override: Mapping[str, Any]) -> AcceleratorInfo:
    allowed = {"utilization", "temperature_c", "ecc_errors", "memory_used_mib"}
    changes = {k: v for k, v in override.items() if k in allowed}
    try:
        return replace(info, **changes)
    except (InvalidInput, TypeError) as exc:
        log.warning("ignoring simulated state for %s: %s", info.uuid, exc)
        return info


def plugin_probes(settings: Settings) -> list[AcceleratorProbe]:
    """Probes registered under ``underlay.accelerator_probes``, by name; broken ones skipped."""
    probes: list[AcceleratorProbe] = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_ep_name):
        try:
            probe = ep.load()(settings)
        except Exception:  # a third-party plugin may fail any way; it must not stop the node
            log.exception("accelerator probe plugin %r failed to load; skipped", ep.name)
            continue
        if not isinstance(probe, AcceleratorProbe):
            log.error(
                "accelerator probe plugin %r is not a probe (no name/probe()); skipped", ep.name
            )
            continue
        probes.append(probe)
    return probes


def _ep_name(ep: importlib.metadata.EntryPoint) -> str:
    return ep.name


def run_probes(probes: Iterable[AcceleratorProbe], node: str) -> tuple[AcceleratorInfo, ...]:
    """Every probe's devices by index (see the module notes); a failing probe is skipped."""
    found: dict[int, AcceleratorInfo] = {}
    seen: set[str] = set()
    for probe in probes:
        name = str(getattr(probe, "name", type(probe).__name__))
        try:
            devices = list(probe.probe())
            if not all(isinstance(d, AcceleratorInfo) for d in devices):
                raise TypeError("probe() must return AcceleratorInfo objects")
        except Exception:  # a plugin may fail any way; the other probes still count
            log.exception("accelerator probe %r failed; its devices are left out", name)
            continue
        shift = max(found) + 1 if any(d.index in found for d in devices) else 0
        for device in devices:
            uuid = device.uuid or f"{name}-{node}-{device.index}"
            if uuid in seen:
                log.warning("probe %r reported %s again; ignored", name, uuid)
                continue
            index = device.index + shift
            if index in found:  # the probe repeated an index
                index = max(found) + 1
            seen.add(uuid)
            found[index] = replace(device, index=index, uuid=uuid)
    return tuple(found[i] for i in sorted(found))


def probe_node(settings: Settings, name: str | None = None) -> NodeInventory:
    """This machine now: CPUs and memory (psutil), RAPL readability, and every accelerator
    probe's devices (NVML, entry-point plugins, then ``compute.simulated_accelerators``).

    The node is named ``name``, else ``compute.node_name``, else the host name.
    """
    hostname = socket.gethostname()
    node = name or settings.compute.node_name or hostname
    probes: list[AcceleratorProbe] = [NvmlProbe(), *plugin_probes(settings)]
    if settings.compute.simulated_accelerators:
        probes.append(
            SimulatedProbe(
                settings.compute.simulated_accelerators,
                node,
                settings.home / SIMULATED_STATE_FILE,
            )
        )
    cpus = _usable_cpus()
    return NodeInventory(
        name=node,
        hostname=hostname,
        cpu_count=cpus,
        cpu_milli=cpus * 1000,
        memory_mib=int(psutil.virtual_memory().total) // _MIB,
        # since the previous call: the agent calls this every heartbeat
        cpu_utilization=min(1.0, psutil.cpu_percent(interval=None) / 100.0),
        accelerators=run_probes(probes, node),
        rapl_readable=RaplReader().available(),
        labels=tuple(sorted(f"{k}={v}" for k, v in settings.compute.node_labels.items())),
    )


def _usable_cpus() -> int:
    # A container or taskset may allow fewer CPUs than the machine has; jobs can only use these.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return psutil.cpu_count(logical=True) or 1


# -- health ---------------------------------------------------------------------------------


def _compute(settings: Settings | ComputeSettings) -> ComputeSettings:
    return settings.compute if isinstance(settings, Settings) else settings


def assess(acc: AcceleratorInfo, settings: Settings | ComputeSettings) -> tuple[bool, str]:
    """Whether ``acc`` may take new work, and if not why (reasons joined by ``; ``)."""
    limit = _compute(settings).max_temperature_c
    reasons = []
    if acc.temperature_c is not None and acc.temperature_c > limit:
        reasons.append(
            f"{acc.label()} is {acc.temperature_c:g} °C, above the {limit:g} °C limit; "
            "check its cooling"
        )
    if acc.ecc_errors > 0:
        reasons.append(
            f"{acc.label()} has {acc.ecc_errors} uncorrected ECC error"
            f"{'s' if acc.ecc_errors != 1 else ''}; drain it and reset or replace it"
        )
    return (not reasons, "; ".join(reasons))


def missing(previous_uuids: Iterable[str], current: Iterable[AcceleratorInfo]) -> list[str]:
    """The uuids seen before that no probe reports now (a failed or removed device), sorted."""
    now = {a.uuid for a in current}
    return sorted(set(previous_uuids) - now)


def gone_reason(index: int, type: str, uuid: str) -> str:
    """The health reason for a device :func:`missing` found."""
    return (
        f"GPU {index} ({type}, uuid {uuid}) is gone: no probe reports it any more; "
        "check the driver and the device"
    )


# -- CPU energy -----------------------------------------------------------------------------

_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")


class RaplReader:
    """CPU package energy from Linux powercap (Intel RAPL; AMD exposes the same files).

    :meth:`sample` returns joules consumed by all packages since this reader's first sample,
    unwrapping each counter at ``max_energy_range_uj``. A counter can wrap more than once
    between two samples if they are far apart (about every 20 minutes at 200 W), so sample
    at least every heartbeat. Only top-level zones (packages) are read; their sub-zones are
    parts of them.
    """

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        self.root = root
        self._last: dict[str, int] = {}
        self._total_uj = 0

    def zones(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _PACKAGE_ZONE.fullmatch(p.name))

    def available(self) -> bool:
        """Whether every package's counter can be read (usually root only)."""
        zones = self.zones()
        try:
            for zone in zones:
                int((zone / "energy_uj").read_text())
        except (OSError, ValueError):
            return False
        return bool(zones)

    def sample(self) -> float:
        """Joules since the first sample (0.0 then). Raises ``OSError`` if a counter cannot be
        read; call :meth:`available` first."""
        for zone in self.zones():
            now = int((zone / "energy_uj").read_text())
            before = self._last.get(zone.name)
            if before is not None:
                delta = now - before
                if delta < 0:  # wrapped: the counter restarts from 0 after max_energy_range_uj
                    delta += int((zone / "max_energy_range_uj").read_text())
                self._total_uj += max(0, delta)
            self._last[zone.name] = now
        return self._total_uj / 1e6

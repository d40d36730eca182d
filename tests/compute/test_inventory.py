"""Accelerator inventory: NVML mapping, simulated devices, probe plugins, health and RAPL.

NVML is the one seam that cannot run on a machine without a GPU: its mapping is checked
against a stand-in ``pynvml`` module with the real module's names; everything else runs for
real (psutil, real files, a real entry-point distribution on ``sys.path``).
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from underlay.compute.inventory import (
    ENTRY_POINT_GROUP,
    SIMULATED_STATE_FILE,
    AcceleratorInfo,
    NodeInventory,
    NvmlProbe,
    RaplReader,
    SimulatedProbe,
    assess,
    gone_reason,
    missing,
    probe_node,
    run_probes,
)
from underlay.config import ComputeSettings, Settings, SimulatedAccelerator
from underlay.errors import InvalidInput

# -- NVML -----------------------------------------------------------------------------------


class _NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class _Gpu:
    name: bytes | str
    uuid: str
    total: int
    used: int
    util: int
    power_mw: int | None
    limit_mw: int | None
    temp: int | None
    ecc: int | None  # None: not supported (consumer boards)
    mig: int | None
    broken: bool = False  # fallen off the bus


def fake_nvml(gpus: list[_Gpu], *, init_error: int | None = None) -> types.ModuleType:
    """A stand-in for ``pynvml`` with the names and conventions of nvidia-ml-py."""
    m = types.ModuleType("pynvml")
    m.NVMLError = _NVMLError  # type: ignore[attr-defined]
    m.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    m.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1  # type: ignore[attr-defined]
    m.NVML_VOLATILE_ECC = 0  # type: ignore[attr-defined]
    m.NVML_DEVICE_MIG_ENABLE = 1  # type: ignore[attr-defined]
    m.shutdowns = 0  # type: ignore[attr-defined]

    def init() -> None:
        if init_error is not None:
            raise _NVMLError(init_error)

    def shutdown() -> None:
        m.shutdowns += 1  # type: ignore[attr-defined]

    def handle(i: int) -> _Gpu:
        if gpus[i].broken:
            raise _NVMLError(15)  # NVML_ERROR_GPU_IS_LOST
        return gpus[i]

    def need(value: Any) -> Any:
        if value is None:
            raise _NVMLError(3)  # NVML_ERROR_NOT_SUPPORTED
        return value

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = handle  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: h.name  # type: ignore[attr-defined]
    m.nvmlDeviceGetUUID = lambda h: h.uuid  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=h.total, used=h.used, free=h.total - h.used
    )
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=h.util, memory=0
    )
    m.nvmlDeviceGetPowerUsage = lambda h: need(h.power_mw)  # type: ignore[attr-defined]
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: need(h.limit_mw)  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = lambda h, sensor: need(h.temp)  # type: ignore[attr-defined]
    m.nvmlDeviceGetTotalEccErrors = lambda h, kind, counter: need(h.ecc)  # type: ignore[attr-defined]
    m.nvmlDeviceGetMigMode = lambda h: [need(h.mig), h.mig]  # type: ignore[attr-defined]
    return m


GIB = 1024**3


def test_nvml_probe_without_the_package_reports_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    assert NvmlProbe().probe() == []


def test_nvml_probe_on_this_machine_reports_what_it_has_without_raising() -> None:
    """On a machine without an NVIDIA driver (or without nvidia-ml-py) none are found; on a
    GPU host, exactly the GPUs ``nvidia-smi -L`` lists, each a real (not simulated) device."""
    found = NvmlProbe().probe()
    smi = shutil.which("nvidia-smi")
    try:
        importlib.import_module("pynvml")
    except ImportError:
        smi = None  # without the package the probe reports none, whatever the hardware
    if smi is None:
        assert found == []
        return
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    gpus = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    assert len(found) == len(gpus)
    assert all(a.vendor == "nvidia" and not a.simulated and a.memory_mib > 0 for a in found)


def test_nvml_probe_without_the_driver_reports_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_nvml([], init_error=12)  # NVML_ERROR_LIBRARY_NOT_FOUND
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert NvmlProbe().probe() == []
    assert nvml.shutdowns == 0


def test_nvml_probe_maps_every_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [
        _Gpu(b"NVIDIA A100-SXM4-80GB", "GPU-aaa", 80 * GIB, 2 * GIB, 37, 251_500, 400_000, 65,
             0, 0),
        _Gpu("NVIDIA GeForce RTX 4090", "GPU-bbb", 24 * GIB, 0, 0, None, None, None, None, None),
        _Gpu("NVIDIA H100 80GB HBM3", "GPU-ccc", 80 * GIB, 0, 0, 70_000, 700_000, 40, 2, 1),
    ]  # fmt: skip
    nvml = fake_nvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    a100, rtx, h100 = NvmlProbe().probe()
    assert a100 == AcceleratorInfo(
        index=0,
        uuid="GPU-aaa",
        vendor="nvidia",
        type="A100",
        memory_mib=81920,
        memory_used_mib=2048,
        utilization=0.37,
        power_watts=251.5,
        busy_watts=400.0,
        temperature_c=65.0,
        ecc_errors=0,
        mig=False,
    )
    # a consumer board without power, temperature, ECC or MIG support still shows up
    assert (rtx.type, rtx.power_watts, rtx.temperature_c, rtx.ecc_errors, rtx.mig) == (
        "RTX4090", None, None, 0, False,
    )  # fmt: skip
    assert (h100.type, h100.ecc_errors, h100.mig) == ("H100", 2, True)
    assert nvml.shutdowns == 1


def test_a_gpu_nvml_cannot_read_is_left_out_and_then_found_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpus = [
        _Gpu("NVIDIA A100", f"GPU-{i}", 40 * GIB, 0, 0, None, None, None, None, None)
        for i in range(3)
    ]
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(gpus))
    before = NvmlProbe().probe()
    gpus[1].broken = True
    after = NvmlProbe().probe()
    assert [a.uuid for a in after] == ["GPU-0", "GPU-2"]
    assert missing([a.uuid for a in before], after) == ["GPU-1"]


# -- simulated ------------------------------------------------------------------------------

SIMS = [SimulatedAccelerator(type="A100", count=2), SimulatedAccelerator(type="T4", count=1,
        memory_mib=16384, idle_watts=10, busy_watts=70)]  # fmt: skip


def test_simulated_accelerators_are_stable_marked_and_idle_by_default() -> None:
    probe = SimulatedProbe(SIMS, "n1")
    first, second = probe.probe(), probe.probe()
    assert first == second
    assert [(a.index, a.uuid, a.type) for a in first] == [
        (0, "SIM-n1-0", "A100"),
        (1, "SIM-n1-1", "A100"),
        (2, "SIM-n1-2", "T4"),
    ]
    assert all(a.simulated and a.utilization == 0.0 and a.power_watts is None for a in first)
    assert (first[2].idle_watts, first[2].busy_watts, first[2].memory_mib) == (10, 70, 16384)


def test_simulated_state_file_sets_readings_and_can_remove_a_device(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    probe = SimulatedProbe(SIMS, "n1", state)
    state.write_text(
        json.dumps({"0": 0.9, "SIM-n1-1": {"temperature_c": 95, "ecc_errors": 1}, "2": {"gone": 1}})
    )
    accs = probe.probe()
    assert [(a.uuid, a.utilization, a.temperature_c, a.ecc_errors) for a in accs] == [
        ("SIM-n1-0", 0.9, None, 0),
        ("SIM-n1-1", 0.0, 95, 1),
    ]
    state.write_text("{}")  # the file is re-read on each probe
    assert len(probe.probe()) == 3


def test_a_malformed_simulated_state_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "sim.json"
    state.write_text("[1, 2")
    with caplog.at_level(logging.WARNING):
        assert [a.utilization for a in SimulatedProbe(SIMS, "n1", state).probe()] == [0, 0, 0]
    assert "ignoring simulated accelerator state" in caplog.text
    state.write_text(json.dumps({"0": 1.5}))  # not a fraction: that device keeps its default
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert SimulatedProbe(SIMS, "n1", state).probe()[0].utilization == 0.0
    assert "utilization is a fraction 0..1" in caplog.text


# -- the node -------------------------------------------------------------------------------


def sim_settings(tmp_path: Path, **compute: Any) -> Settings:
    return Settings(
        home=tmp_path / "home",
        compute={"node_name": "n1", "simulated_accelerators": [s.model_dump() for s in SIMS]}
        | compute,
    )


def test_probe_node_reports_cpus_memory_and_simulated_gpus(tmp_path: Path) -> None:
    settings = sim_settings(tmp_path)
    settings.home.mkdir()
    (settings.home / SIMULATED_STATE_FILE).write_text(json.dumps({"1": 0.5}))
    inv = probe_node(settings)
    assert inv.name == "n1" and inv.hostname
    assert inv.cpu_count >= 1 and inv.cpu_milli == 1000 * inv.cpu_count
    assert inv.memory_mib > 0 and 0.0 <= inv.cpu_utilization <= 1.0
    assert inv.simulated
    assert [a.utilization for a in inv.accelerators] == [0.0, 0.5, 0.0]
    assert probe_node(settings, name="other").accelerators[0].uuid == "SIM-other-0"


def test_node_inventory_round_trips_through_json(tmp_path: Path) -> None:
    inv = probe_node(sim_settings(tmp_path))
    wire = json.loads(json.dumps(inv.to_dict()))
    assert wire["simulated"] is True
    assert NodeInventory.from_dict(wire) == inv


def test_a_node_without_accelerators_is_not_simulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # a host without NVIDIA GPUs, even here
    inv = probe_node(Settings(home=tmp_path, compute={"node_name": "plain"}))
    assert inv.accelerators == () and not inv.simulated


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": None}, r"'name' must be a string, got None"),
        ({"cpu_milli": "8"}, r"'cpu_milli' must be an integer, got '8'"),
        ({"cpu_milli": True}, r"'cpu_milli' must be an integer, got True"),
        ({"cpu_utilization": 3.0}, r"cpu_utilization is a fraction 0\.\.1"),
        ({"accelerators": {"0": {}}}, r"'accelerators' must be a list of objects"),
        ({"accelerators": [{"index": 0, "uuid": "u", "type": "A100"}]}, r"'memory_mib' is req"),
        (
            {"accelerators": [{"index": 0, "uuid": "u", "type": "A", "memory_mib": 1,
                               "utilization": 37}]},
            r"accelerator 0: utilization is a fraction 0\.\.1, got 37\.0 \(divide a percentage",
        ),
        (
            {"accelerators": [{"index": 0, "uuid": "u", "type": "A", "memory_mib": 1}] * 2},
            r"accelerator indexes repeat: \[0, 0\]",
        ),
    ],
)  # fmt: skip
def test_malformed_inventories_are_refused_with_the_field(
    change: dict[str, Any], match: str
) -> None:
    good = {"name": "n", "hostname": "h", "cpu_count": 8, "cpu_milli": 8000, "memory_mib": 1024}
    with pytest.raises(InvalidInput, match=match):
        NodeInventory.from_dict(good | change)


def test_unknown_keys_from_a_newer_agent_are_ignored() -> None:
    data = {"name": "n", "cpu_count": 1, "cpu_milli": 1000, "memory_mib": 1, "future": [1]}
    assert NodeInventory.from_dict(data).name == "n"


# -- plugins --------------------------------------------------------------------------------

PLUGINS = """
from underlay.compute.inventory import AcceleratorInfo

class TpuProbe:
    name = "tpu"
    def __init__(self, settings):
        self.node = settings.compute.node_name
    def probe(self):
        return [AcceleratorInfo(index=7, uuid="", vendor="google", type="v5e", memory_mib=16384)]

class Boom:
    name = "boom"
    def __init__(self, settings):
        pass
    def probe(self):
        raise RuntimeError("driver exploded")

class Wrong:
    name = "wrong"
    def __init__(self, settings):
        pass
    def probe(self):
        return [{"index": 0}]

def not_a_probe(settings):
    return object()

def bad_factory(settings):
    raise OSError("vendor library missing")
"""


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real installed distribution (dist-info on sys.path) registering probe plugins."""
    site = tmp_path / "site"
    info = site / "underlay_test_probes-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "underlay_test_probes.py").write_text(PLUGINS)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: underlay-test-probes\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "a_tpu = underlay_test_probes:TpuProbe\n"
        "b_boom = underlay_test_probes:Boom\n"
        "c_wrong = underlay_test_probes:Wrong\n"
        "d_not_a_probe = underlay_test_probes:not_a_probe\n"
        "e_bad_factory = underlay_test_probes:bad_factory\n"
        "f_missing = underlay_test_probes_absent:Probe\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "underlay_test_probes", raising=False)
    yield site
    sys.modules.pop("underlay_test_probes", None)


@pytest.mark.usefixtures("plugin_dist")
def test_broken_probe_plugins_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        inv = probe_node(sim_settings(tmp_path))
    # the working plugin's device keeps its index and is given a uuid
    assert [(a.index, a.uuid, a.type) for a in inv.accelerators] == [
        (0, "SIM-n1-0", "A100"),
        (1, "SIM-n1-1", "A100"),
        (2, "SIM-n1-2", "T4"),
        (7, "tpu-n1-7", "v5e"),
    ]
    for name in ("'boom' failed", "'wrong' failed", "'d_not_a_probe' is not a probe",
                 "'e_bad_factory' failed to load", "'f_missing' failed to load"):  # fmt: skip
        assert name in caplog.text


class Listed:
    def __init__(self, name: str, devices: list[AcceleratorInfo]) -> None:
        self.name = name
        self.devices = devices

    def probe(self) -> list[AcceleratorInfo]:
        return self.devices


def acc(index: int, uuid: str = "") -> AcceleratorInfo:
    return AcceleratorInfo(index=index, uuid=uuid, vendor="v", type="X", memory_mib=1)


def test_a_device_two_probes_report_is_listed_once() -> None:
    twice = Listed("twice", [acc(0, "GPU-x"), acc(0, "GPU-x")])
    assert [a.uuid for a in run_probes([twice, twice], "n")] == ["GPU-x"]


def test_indexes_stay_put_and_only_colliding_probes_shift() -> None:
    holes = Listed("nvidia", [acc(0, "GPU-a"), acc(2, "GPU-c")])  # GPU 1 fell off the bus
    other = Listed("npu", [acc(0), acc(1)])
    assert [(a.index, a.uuid) for a in run_probes([holes, other], "n")] == [
        (0, "GPU-a"),
        (2, "GPU-c"),
        (3, "npu-n-0"),
        (4, "npu-n-1"),
    ]
    assert [a.index for a in run_probes([Listed("x", [acc(5)]), holes], "n")] == [0, 2, 5]


# -- health ---------------------------------------------------------------------------------


def gpu(**kw: Any) -> AcceleratorInfo:
    base: dict[str, Any] = {
        "index": 2,
        "uuid": "GPU-42",
        "vendor": "nvidia",
        "type": "A100",
        "memory_mib": 81920,
    }
    return AcceleratorInfo(**(base | kw))


def test_a_cool_clean_gpu_is_healthy() -> None:
    assert assess(gpu(temperature_c=70.0), ComputeSettings()) == (True, "")
    assert assess(gpu(temperature_c=None), ComputeSettings()) == (True, "")
    assert assess(gpu(temperature_c=90.0), ComputeSettings()) == (True, "")  # at, not above


def test_a_hot_gpu_is_unhealthy_with_a_readable_reason(tmp_path: Path) -> None:
    ok, reason = assess(gpu(temperature_c=93.0), Settings(home=tmp_path))
    assert not ok
    assert reason.startswith("GPU 2 (A100, uuid GPU-42) is 93 °C, above the 90 °C limit")


def test_ecc_errors_make_a_gpu_unhealthy_and_reasons_combine() -> None:
    ok, reason = assess(
        gpu(ecc_errors=3, temperature_c=99.5, simulated=True), ComputeSettings(max_temperature_c=95)
    )
    assert not ok
    assert "GPU 2 (A100, simulated, uuid GPU-42) is 99.5 °C, above the 95 °C limit" in reason
    assert "has 3 uncorrected ECC errors; drain it" in reason
    assert reason.count("; ") >= 2


def test_missing_lists_devices_no_longer_reported() -> None:
    now = [gpu(uuid="b"), gpu(uuid="d", index=3)]
    assert missing({"a", "b", "c"}, now) == ["a", "c"]
    assert missing([], now) == []
    assert gone_reason(1, "A100", "a") == (
        "GPU 1 (A100, uuid a) is gone: no probe reports it any more; check the driver and the "
        "device"
    )


# -- RAPL -----------------------------------------------------------------------------------


def zone(root: Path, name: str, energy_uj: int, max_uj: int = 1000_000) -> Path:
    z = root / name
    z.mkdir(parents=True, exist_ok=True)
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def test_rapl_sums_packages_and_unwraps_counters(tmp_path: Path) -> None:
    zone(tmp_path, "intel-rapl:0", 900_000)
    zone(tmp_path, "intel-rapl:1", 100)
    zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone (core), part of package 0: not added
    rapl = RaplReader(tmp_path)
    assert rapl.available()
    assert rapl.sample() == 0.0
    zone(tmp_path, "intel-rapl:0", 50_000)  # wrapped at 1 J: 0.1 J + 0.05 J
    zone(tmp_path, "intel-rapl:1", 2_000_100)  # +2 J
    zone(tmp_path, "intel-rapl:0:0", 999_999)
    assert rapl.sample() == pytest.approx(2.15)
    zone(tmp_path, "intel-rapl:0", 1_050_000, max_uj=10_000_000)
    assert rapl.sample() == pytest.approx(3.15)


def test_rapl_is_unavailable_without_zones_or_with_unreadable_counters(tmp_path: Path) -> None:
    assert not RaplReader(tmp_path / "absent").available()
    assert not RaplReader(tmp_path).available()  # no zones
    (zone(tmp_path, "intel-rapl:0", 1) / "energy_uj").write_text("permission denied?")
    assert not RaplReader(tmp_path).available()


def test_rapl_availability_on_this_machine_matches_what_the_kernel_lets_us_read() -> None:
    counter = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
    try:
        int(counter.read_text())
        readable = True
    except (OSError, ValueError):
        readable = False
    assert RaplReader().available() is readable

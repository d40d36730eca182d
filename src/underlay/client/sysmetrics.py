"""System metrics of a run, sampled in a thread: CPU and memory through psutil, and each
NVIDIA GPU's utilisation and power through NVML where present (the same probe the node
inventory uses, :class:`underlay.compute.inventory.NvmlProbe`; without a GPU, the driver or
``nvidia-ml-py`` it finds none and the GPU keys are not logged).

Keys: ``system/cpu_percent``, ``system/memory_percent``, ``system/memory_used_mb``,
``system/gpu<i>/utilization_percent``, ``system/gpu<i>/memory_used_mb`` and
``system/gpu<i>/power_w``. Step ``n`` is the ``n``-th sample.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from underlay.client.tracking import ActiveRun

log = logging.getLogger(__name__)


class Sampler:
    """Reads the system's figures; ``gpus`` is the NVML seam (a probe with ``probe()``)."""

    def __init__(self, gpus: Any | None = None) -> None:
        import psutil

        from underlay.compute.inventory import NvmlProbe

        self._psutil = psutil
        self._gpus = gpus if gpus is not None else NvmlProbe()
        psutil.cpu_percent(None)  # the first reading starts the interval

    def sample(self) -> dict[str, float]:
        memory = self._psutil.virtual_memory()
        figures = {
            "system/cpu_percent": float(self._psutil.cpu_percent(None)),
            "system/memory_percent": float(memory.percent),
            "system/memory_used_mb": (memory.total - memory.available) / 2**20,
        }
        for gpu in self._gpus.probe():
            prefix = f"system/gpu{gpu.index}"
            figures[f"{prefix}/utilization_percent"] = float(gpu.utilization) * 100
            figures[f"{prefix}/memory_used_mb"] = float(gpu.memory_used_mib)
            if gpu.power_watts is not None:
                figures[f"{prefix}/power_w"] = float(gpu.power_watts)
        return figures


def start_sampler(
    run: ActiveRun, interval_s: float, stop: threading.Event, gpus: Any | None = None
) -> threading.Thread:
    """A daemon thread logging a sample to ``run`` every ``interval_s`` until ``stop``."""
    sampler = Sampler(gpus)

    def loop() -> None:
        step = 0
        while not stop.wait(interval_s):
            try:
                run.log_metrics(sampler.sample(), step=step)
            except Exception:  # a sample must never stop the training it watches
                log.warning("system metrics of run %s stopped", run.id, exc_info=True)
                return
            step += 1

    thread = threading.Thread(target=loop, name=f"underlay-sysmetrics-{run.id}", daemon=True)
    thread.start()
    return thread

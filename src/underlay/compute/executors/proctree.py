"""The process tree of an attempt's shim: finding the shim, sampling what its descendants
use, killing them (see :mod:`.local`). The shim itself is never billed nor killed: it must
record how the job ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from underlay.compute.executors.base import ProcessRef, UsageSample

MIB = 1024 * 1024
# create_time is boot time plus ticks since boot; the kernel moves boot time when the clock is
# stepped, so allow some drift. A pid reused within a second would need a pid wrap-around.
START_TOLERANCE_S = 1.0


def shim_process(ref: ProcessRef) -> psutil.Process | None:
    """The attempt's shim if it still runs: same pid, same start time, not a zombie."""
    try:
        process = psutil.Process(ref.pid)
        if abs(process.create_time() - ref.started) > START_TOLERANCE_S:
            return None  # the pid was reused by another process
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return process


def tree_usage(process: psutil.Process, started: float) -> UsageSample:
    """CPU seconds and RSS of the shim's descendants (the shim itself is not billed)."""
    cpu = 0.0
    rss = 0
    try:
        own = process.cpu_times()
        cpu += own.children_user + own.children_system  # descendants it has reaped
        descendants = _descendants(process)
    except psutil.Error:
        descendants = []
    for child in descendants:
        try:
            with child.oneshot():
                times = child.cpu_times()
                rss += child.memory_info().rss
        except psutil.Error:
            continue
        cpu += times.user + times.system + times.children_user + times.children_system
    return UsageSample(cpu_s=cpu, rss_mib=rss / MIB, wall_s=max(0.0, time.time() - started))


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    """The shim's descendants for sampling, walked through ``/proc/PID/task/TID/children``
    where the kernel has it: psutil's ``children(recursive=True)`` scans every process on the
    machine, once per job per poll. A child forked during the walk may be missed until the
    next poll, which a watchdog can afford; killing uses psutil's full scan."""
    if not Path(f"/proc/{process.pid}/task/{process.pid}/children").exists():
        return process.children(recursive=True)
    found: list[psutil.Process] = []
    pending = [process.pid]
    while pending:
        pid = pending.pop()
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue  # it exited meanwhile
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                try:
                    found.append(psutil.Process(child))
                except psutil.Error:
                    continue
                pending.append(child)
    return found


def kill_tree(process: psutil.Process, cgroup: Path | None) -> None:
    """SIGKILL everything the shim started, but not the shim: it must record the end."""
    if cgroup is not None:
        # Kernels before 5.14 have no cgroup.kill; the walk below still runs.
        with contextlib.suppress(OSError):
            (cgroup / "cgroup.kill").write_text("1")
    try:
        descendants = process.children(recursive=True)
    except psutil.Error:
        return
    groups = set()
    for child in descendants:
        try:
            groups.add(os.getpgid(child.pid))
        except OSError:
            continue
    for group in groups - {process.pid, os.getpgrp()}:
        with contextlib.suppress(OSError):  # gone already
            os.killpg(group, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()  # those that left the group

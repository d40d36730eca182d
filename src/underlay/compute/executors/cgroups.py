"""cgroup v2 leaves that hold a job's memory limit (see :mod:`.local`, **Memory**).

Where ``/sys/fs/cgroup`` is a writable cgroup v2 mount each attempt gets a leaf with
``memory.max`` and no swap, so the kernel enforces the limit exactly; everywhere else these
return None and the executor's watchdog alone applies.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024


def find_parent() -> Path | None:
    """A cgroup v2 directory where job cgroups get the memory controller, or None.

    Only where ``/sys/fs/cgroup`` is a cgroup2 mount and this process may enable the memory
    controller below its own cgroup (as root on the host, or in a delegated subtree prepared
    for it); a cgroup v1 or read-only hierarchy returns None and the watchdog alone applies.
    """
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        if not any(line.split()[1:3] == [str(CGROUP_ROOT), "cgroup2"] for line in mounts):
            return None
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        own = next((line[3:] for line in lines if line.startswith("0::")), None)
        if own is None:
            return None
        here = CGROUP_ROOT / own.strip().lstrip("/")
        parent = here / "underlay-jobs"
        for level in (here, parent):
            level.mkdir(exist_ok=True)
            control = level / "cgroup.subtree_control"
            if "memory" not in control.read_text().split():
                control.write_text("+memory")
    except OSError:
        return None
    return parent


def make(parent: Path | None, name: str, memory_mib: int) -> Path | None:
    """A cgroup v2 leaf ``name`` under ``parent`` with a memory limit and no swap, or None
    where there is none (no parent, or the kernel refused)."""
    if parent is None:
        return None
    path = parent / name
    try:
        path.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(memory_mib * MIB))
        swap = path / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")  # with swap the kernel would page out instead of killing
    except OSError:
        remove(path)
        return None
    return path


def remove(path: Path) -> None:
    """Kill what is left in a job cgroup and remove it (best effort)."""
    try:
        kill = path / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        path.rmdir()
    except OSError:
        pass  # still busy or already gone; an empty leftover cgroup costs nothing


def oom_peak(path: Path) -> float | None:
    """The cgroup's peak MiB if the kernel OOM-killed something in it, else None."""
    try:
        events = dict(line.split() for line in (path / "memory.events").read_text().splitlines())
        if int(events.get("oom_kill", "0")) == 0:
            return None
        peak = path / "memory.peak"
        return int(peak.read_text()) / MIB if peak.exists() else 0.0
    except (OSError, ValueError):
        return None

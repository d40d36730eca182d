"""The local-process provider: each instance is a real ``underlay agent`` process on this
machine, with the group's accelerators simulated, reporting to the server over HTTP.

For tests and the demo: what it launches registers, heartbeats and runs jobs exactly as a
remote agent does; only the hardware is pretend (the agent reports this machine's CPUs and
memory, and the group's accelerators as simulated ones). Each instance gets its own home
folder under ``<home>/autoscaler/local/<node>``. :meth:`LocalProcessProvider.reclaim` plays
a spot reclaim: the agent and every job it started are killed at once, without a word to the
server, and the next :meth:`~LocalProcessProvider.list` reports the instance ``reclaimed``.

Local instances live and die with the server process that launched them: :meth:`close`
terminates them all. The instance table is kept in ``instances.json`` so that a server
restarted after a crash adopts (and can terminate) the agents its predecessor left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil

from underlay.compute.autoscaler.providers import Instance, LaunchContext, NodeGroup, table_price
from underlay.config import Settings


@dataclass(frozen=True, slots=True)
class _Process:
    instance: Instance
    pid: int
    created: float


class LocalProcessProvider:
    """Node agents as local processes (see the module docstring)."""

    name = "local"
    supports_spot = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "autoscaler" / "local"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._reclaimed: list[Instance] = []
        self._procs: dict[str, _Process] = self._load()

    # -- the provider interface -------------------------------------------------------------

    def launch(self, group: NodeGroup, count: int, context: LaunchContext) -> list[Instance]:
        out = []
        for _ in range(count):
            node = f"{group.name}-{secrets.token_hex(4)}"
            home = self.root / node
            home.mkdir(mode=0o700)
            env = self._env(group, home, context.token_for(node), context)
            command = [sys.executable, "-m", "underlay.cli.main", "agent"]
            command += ["--server", context.server_url, "--name", node]
            with (home / "agent.log").open("ab") as log:
                child = subprocess.Popen(
                    command, env=env, stdout=log, stderr=log, start_new_session=True
                )
            instance = Instance(node, group.name, node, "pending", time.time(), group.spot)
            with self._lock:
                self._children[node] = child
                self._procs[node] = _Process(instance, child.pid, _created(child.pid))
                self._save()
            out.append(instance)
        return out

    def terminate(self, ids: Sequence[str]) -> None:
        for instance_id in ids:
            with self._lock:
                proc = self._procs.pop(instance_id, None)
                self._save()
            if proc is not None:
                self._kill(proc, graceful=True)

    def list(self) -> list[Instance]:
        """Running agents; one that died on its own is dropped (its node goes lost)."""
        with self._lock:
            for dead in [i for i, p in self._procs.items() if not _alive(p)]:
                del self._procs[dead]
                child = self._children.pop(dead, None)
                if child is not None:
                    child.poll()  # reap it
                self._save()
            out = [replace(p.instance, state="running") for p in self._procs.values()]
            out += self._reclaimed
            self._reclaimed = []
        return out

    def price(self, group: NodeGroup) -> float:
        autoscaler = self.settings.compute.autoscaler
        return table_price(group, self.settings.compute.prices, autoscaler.spot_discount)

    def close(self) -> None:
        with self._lock:
            ids = list(self._procs)
        self.terminate(ids)

    # -- local only -----------------------------------------------------------------------

    def reclaim(self, instance_id: str) -> None:
        """Take a spot instance back, as a cloud would: kill its agent and its jobs now."""
        with self._lock:
            proc = self._procs.pop(instance_id, None)
            if proc is None:
                raise KeyError(f"no running local instance {instance_id!r}")
            self._reclaimed.append(replace(proc.instance, state="reclaimed"))
            self._save()
        self._kill(proc, graceful=False)

    def _env(
        self, group: NodeGroup, home: Path, token: str, context: LaunchContext
    ) -> dict[str, str]:
        # the agent's settings come from its environment; the server's must not leak into it
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERLAY_")}
        compute = self.settings.compute
        labels = dict(label.split("=", 1) for label in group.node_labels)
        env.update(
            {
                "UNDERLAY_HOME": str(home),
                "UNDERLAY_TOKEN": token,
                "UNDERLAY_COMPUTE__NODE_LABELS": json.dumps(labels),
                "UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S": str(compute.heartbeat_interval_s),
                "UNDERLAY_COMPUTE__GRACE_S": str(compute.grace_s),
                "UNDERLAY_COMPUTE__ISOLATION": compute.isolation,
                "UNDERLAY_COMPUTE__REQUIRE_ISOLATION": str(compute.require_isolation).lower(),
            }
        )
        if group.gpus:
            simulated = [
                {
                    "type": group.accelerator_type,
                    "count": group.gpus,
                    "memory_mib": group.accelerator_memory_mib,
                }
            ]
            env["UNDERLAY_COMPUTE__SIMULATED_ACCELERATORS"] = json.dumps(simulated)
        env.update(context.extra_env)
        return env

    def _kill(self, proc: _Process, *, graceful: bool) -> None:
        """Stop the agent (SIGTERM, then SIGKILL after 5 s; at once if not ``graceful``) and
        every job process group it started (their references are in its run folder)."""
        jobs = _job_groups(self.root / proc.instance.node)
        _signal_group(proc, signal.SIGTERM if graceful else signal.SIGKILL)
        child = self._children.pop(proc.instance.id, None)
        deadline = time.monotonic() + 5.0
        while _alive(proc) and time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                break
            time.sleep(0.05)
        _signal_group(proc, signal.SIGKILL)
        for pid, created in jobs:
            _signal_group(_Process(proc.instance, pid, created), signal.SIGKILL)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5.0)

    def _load(self) -> dict[str, _Process]:
        path = self.root / "instances.json"
        if not path.exists():
            return {}
        procs = {}
        for row in json.loads(path.read_text()):
            proc = _Process(Instance(**row["instance"]), int(row["pid"]), float(row["created"]))
            if _alive(proc):  # left by a crashed server: adopt it
                procs[proc.instance.id] = proc
        return procs

    def _save(self) -> None:
        rows = [
            {"instance": asdict(p.instance), "pid": p.pid, "created": p.created}
            for p in self._procs.values()
        ]
        tmp = self.root / "instances.json.tmp"
        tmp.write_text(json.dumps(rows))
        tmp.replace(self.root / "instances.json")


def _created(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _alive(proc: _Process) -> bool:
    """Whether ``proc`` still runs (the same process: a reused pid has another start time)."""
    try:
        p = psutil.Process(proc.pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - proc.created) < 1
    except psutil.Error:
        return False


def _signal_group(proc: _Process, sig: signal.Signals) -> None:
    if _alive(proc):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _job_groups(home: Path) -> list[tuple[int, float]]:
    """(pid, start time) of the attempts an agent under ``home`` launched."""
    found = []
    for path in home.glob("agent/*/attempt-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(path.read_text())
            found.append((int(saved["pid"]), float(saved["started"])))
    return found

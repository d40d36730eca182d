"""A Ray cluster on this machine, every address pinned to 127.0.0.1.

The Ray executor starts one when ``compute.ray_address`` is not set (``underlay up`` on a
laptop), and the tests start one with a head and a worker node. Each node is a ``ray start
--block`` process of our own: it owns the node's Ray processes and takes them down when it gets
SIGTERM; :meth:`LocalRayCluster.stop` then kills, by pid, whatever of that process tree is
still there, so nothing is left behind.

Ray started in-process (``ray.init()``) listens on ``0.0.0.0`` and on the machine's own
address. Here every port a node opens is chosen and every address is given: the node's IP, the
GCS, the node manager, the object manager, the agents and the metrics port. Workers' own ports
are drawn from a range Ray binds on the node IP. The dashboard is not started (plain ``ray``
has none). Each node names our node in a custom resource, ``underlay_node:<name>``, which is
how the executor pins an attempt's workers to the nodes our scheduler chose.

**Token authentication** (``auth=True``, the default): Ray runs whatever a client of its GCS
submits, as the user Ray runs as, outside our sandbox, and our sandbox has no network
namespace, so a job could reach the GCS on 127.0.0.1. The cluster is started with
``RAY_AUTH_MODE=token`` and a random token in a 0600 file of its 0700 temp folder; the driver
(the agent) is given the same (:func:`auth_environment`), and a job gets neither: its
environment is an allow-list, and the temp folder is hidden from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from underlay.config import write_secret_file
from underlay.errors import Unavailable

HOST = "127.0.0.1"
NODE_RESOURCE = "underlay_node:"
START_TIMEOUT_S = 120.0
STARTED = "Ray runtime started"
# Ray's workers each listen on a port of their node's range, by default
# 10002-19999, where servers (and the test suite's) pick theirs; here the kernel picks them.


def node_resource(node: str) -> str:
    """The Ray custom resource that names our node ``node``."""
    return f"{NODE_RESOURCE}{node}"


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` now (the OS's choice; never 6379 or 5432 when taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalRayCluster:
    """A head and any number of worker nodes on this machine, bound to 127.0.0.1.

    ``temp_dir`` holds Ray's sessions (keep it short: Ray's socket paths must fit in 107
    bytes). ``nodes`` maps each Ray node to the name of our node it stands for."""

    temp_dir: Path
    auth: bool = True
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""

    @property
    def token_path(self) -> Path | None:
        """The file holding the cluster's token (0600, in the 0700 temp folder), or None
        without token authentication."""
        return self.temp_dir / "auth_token" if self.auth else None

    def start_head(self, node: str, *, num_cpus: int = 1) -> str:
        """Start the head node standing for our node ``node``; returns the GCS address."""
        port = free_port()
        self.address = f"{HOST}:{port}"
        role = ["--head", f"--port={port}", "--include-dashboard=false"]
        self._start(role, node, num_cpus)
        return self.address

    def add_node(self, node: str, *, num_cpus: int = 1) -> None:
        """Start a worker node standing for our node ``node`` and joining the head."""
        if not self.address:
            raise RuntimeError("start the head first")
        self._start([f"--address={self.address}"], node, num_cpus)

    def _start(self, role: list[str], node: str, num_cpus: int) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = self.token_path
        if token is not None and not token.exists():
            write_secret_file(token, secrets.token_hex(32).encode(), overwrite=False)
        log_path = self.temp_dir / f"ray-start-{len(self.processes)}.log"
        argv = [
            sys.executable,
            "-c",
            _LOOPBACK_RAY_START,
            "start",
            *role,
            "--block",
            f"--node-ip-address={HOST}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",  # our scheduler places accelerators, not Ray
            f"--resources={json.dumps({node_resource(node): 1})}",
            "--disable-usage-stats",
            "--min-worker-port=0",  # the kernel picks workers' ports (note above)
            "--max-worker-port=0",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=ray_environment(self.token_path),
                start_new_session=True,  # its reaper kills its own group, never ours
            )
        self.processes.append(process)
        self._wait_for(node, process, log_path)

    def _wait_for(self, node: str, process: subprocess.Popen[bytes], log: Path) -> None:
        """Until ``ray start`` says the node runs (it has joined the GCS by then)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if STARTED in log.read_text(errors="replace"):
                return
            if process.poll() is not None:
                raise Unavailable(
                    f"ray start for node {node} exited with {process.returncode}; see {log}"
                )
            time.sleep(0.2)
        raise Unavailable(f"the Ray node for {node} did not start within {START_TIMEOUT_S:g} s")

    def pids(self) -> set[int]:
        """Every process of this cluster now (the ``ray start`` processes and their trees)."""
        found: set[int] = set()
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(process.pid)
                found.add(parent.pid)
                found.update(child.pid for child in parent.children(recursive=True))
        return found

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM each node (it takes its Ray processes down), then SIGKILL what is left."""
        tree = [psutil.Process(pid) for pid in self.pids() if psutil.pid_exists(pid)]
        for process in reversed(self.processes):  # workers first, the head last
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for straggler in alive:
            with contextlib.suppress(psutil.Error):
                straggler.kill()
        psutil.wait_procs(alive, timeout=5)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.processes.clear()


def auth_environment(token_path: Path | None) -> dict[str, str]:
    """Ray's token authentication (``RAY_AUTH_MODE=token``) with the token in ``token_path``;
    empty without one. Every process of the cluster and every driver needs it."""
    if token_path is None:
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def ray_environment(token_path: Path | None = None) -> dict[str, str]:
    """The environment of Ray's processes: ours, with this package importable by the workers
    (an editable checkout is not installed on ``sys.path`` of a bare interpreter) and the
    cluster's token authentication."""
    import underlay

    env = dict(os.environ) | auth_environment(token_path)
    package_root = str(Path(underlay.__file__).resolve().parent.parent)
    paths = [package_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(str(Path(p).resolve()) for p in paths))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


# Ray binds its gRPC servers (GCS, raylet, object manager, workers) to 127.0.0.1 alone only when
# the node's IP is exactly 127.0.0.1, and it turns 127.0.0.1 into the machine's own address
# wherever it meets it (--node-ip-address, --address, ray.init) unless it believes it may not
# form a multi-node cluster. `ray start` is run with that rewrite off for loopback, and the
# node's own processes are told they are loopback-only (they read the variable at start-up).
_LOOPBACK_RAY_START = """
import os
from ray._private import services
from ray.scripts.scripts import main
rewrite = services.resolve_ip_for_localhost
services.resolve_ip_for_localhost = lambda host: host if host == "127.0.0.1" else rewrite(host)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
main()
"""


def import_for_driver(address: str) -> Any:
    """``import ray`` in a process that is about to connect to ``address`` as a driver (the
    agent, inside ``underlay up``), without Ray changing what is not its own:

    - importing Ray replaces the logging record factory (every log record of the process
      would carry ``_ray_timestamp_ns``): the process's own factory is put back;
    - connecting installs a failure signal handler that dumps a stack on SIGTERM and aborts
      the process: off, the process keeps its own signal handling;
    - for a cluster on 127.0.0.1, Ray would turn that into this machine's own address (see
      ``_LOOPBACK_RAY_START``): off.
    """
    factory = logging.getLogRecordFactory()
    import ray
    from ray._private import ray_constants

    logging.setLogRecordFactory(factory)
    # Both are read when they are used, so setting them here works after any import order.
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    if address.rsplit(":", 1)[0] == HOST:
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray

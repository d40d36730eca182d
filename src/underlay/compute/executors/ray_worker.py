"""One worker of one attempt, on the Ray node our scheduler chose.

:class:`AttemptWorker` is the Ray actor the Ray executor starts for each worker (one per
placement-group bundle). It does not run the job itself: it runs it through a
:class:`~underlay.compute.executors.local.LocalExecutor` on its node, so a worker on a Ray node
gets exactly what a job of the local executor gets: the same shim (own session and process
group, SIGTERM forwarded, end recorded atomically), the same sandbox of the node's isolation
mode, the same environment allow-list and device variables, the memory watchdog and cgroup,
the max run time. The actor adds only what is Ray's to add: a folder of its own on its node,
the job's working folder unpacked from the archive the agent sent, the rendezvous address of
rank 0, and reads of the worker's log for the agent to copy into the job's log.

The actor holds one attempt's worker and lives as long as it (``lifetime="detached"``, named,
so an agent that restarted finds it again); the executor kills it once the attempt has ended.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import replace
from pathlib import Path

from underlay.compute.executors import isolation
from underlay.compute.executors.base import (
    EndState,
    ExitStatus,
    LaunchSpec,
    ProcessRef,
    UsageSample,
)
from underlay.compute.executors.local import LocalExecutor
from underlay.compute.executors.ray_cluster import free_port
from underlay.config import ComputeSettings
from underlay.errors import Conflict


class AttemptWorker:
    """One worker; ``folder`` is its own folder on its node (its run and working folders and
    its log), in ``root``, the folder of every worker on the node, which is hidden from every
    job like the agent's run folder (a job sees only its own working folder in it);
    ``home`` is the platform's home, hidden too where this node has it."""

    def __init__(self, folder: str, root: str, compute: ComputeSettings, home: str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        chosen = isolation.from_settings(compute, Path(home), Path(root))
        self.executor = LocalExecutor(
            self.folder / "status", grace_s=compute.grace_s, isolation=chosen, work_dir=self.folder
        )
        self.log_path = self.folder / "job.log"
        self.ref: ProcessRef | None = None

    def isolation_mode(self) -> str:
        return self.executor.isolation.mode

    def rendezvous(self) -> tuple[str, int]:
        """This node's IP (the one its raylet registered) and a port free on it: where rank
        0 listens for the others."""
        from ray._private import worker

        host = str(worker.global_worker.node_ip_address)
        return host, free_port(host)

    def launch(self, spec: LaunchSpec, archive: bytes) -> ProcessRef:
        """Unpack the working folder here and launch the worker through the local executor."""
        if self.ref is not None:
            raise Conflict(f"this worker of job {spec.job_id} was launched already")
        workdir = self.executor.workdir_for(spec.job_id, spec.attempt)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if archive:
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
                tar.extractall(workdir, filter="data")  # no traversal, no devices
        self.ref = self.executor.launch(replace(spec, workdir=workdir, log_path=self.log_path))
        return self.ref

    def poll(self) -> ExitStatus | None:
        return self.executor.poll(self._ref())

    def stop(self, state: EndState, reason: str, grace_s: float) -> None:
        self.executor.stop(self._ref(), state=state, reason=reason, grace_s=grace_s)

    def usage(self) -> UsageSample:
        return self.executor.usage(self._ref())

    def read_log(self, offset: int, limit: int) -> bytes:
        """Up to ``limit`` bytes of the worker's log from ``offset``."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read(limit)
        except FileNotFoundError:
            return b""

    def pid(self) -> int:
        return os.getpid()

    def _ref(self) -> ProcessRef:
        if self.ref is None:
            raise Conflict("this worker was never launched")
        return self.ref

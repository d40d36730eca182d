"""The executor interface every backend implements (local processes now, Ray later).

An executor gets one context argument per call (:class:`LaunchSpec` or :class:`ProcessRef`)
and declares what it supports; an unsupported call raises ``InvalidInput`` saying what to do.
Executors never touch the metadata store: the node agent reports what they observe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from underlay.compute.executors.isolation import Isolation

EndState = Literal["succeeded", "failed", "cancelled", "preempted", "lost"]


@dataclass(frozen=True)
class Worker:
    """Where one worker of a gang runs: the node our scheduler chose, and its accelerators."""

    node: str
    gpu_indexes: tuple[int, ...] = ()
    gpu_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one attempt of a job on this node."""

    job_id: int
    attempt: int
    command: tuple[str, ...]
    workdir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # never logged
    cpu_milli: int = 1000
    memory_mib: int = 512
    cpus: tuple[int, ...] = ()  # CPU affinity; empty: no pinning
    gpu_indexes: tuple[int, ...] = ()
    gpu_uuids: tuple[str, ...] = ()
    gpu_fraction: float | None = None  # share of one GPU for fractional requests
    max_runtime_s: float | None = None
    project_id: int | None = None  # picks the job's uid in the user isolation modes
    # A gang's workers, rank order; empty or one: a single worker on this node (the GPU fields
    # above are then its own). Only executors with ``supports_gang`` take more than one.
    workers: tuple[Worker, ...] = ()


def new_attempt_folder(run_dir: Path, spec: LaunchSpec) -> Path:
    """The attempt's own folder under ``run_dir``, made now; Conflict if it was made before
    (the attempt was launched already), for every executor alike."""
    from underlay.errors import Conflict

    folder = run_dir / f"{spec.job_id}.{spec.attempt}"
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise Conflict(
            f"attempt {spec.attempt} of job {spec.job_id} was launched already ({folder} "
            "exists); adopt it or launch the next attempt"
        ) from None
    return folder


@dataclass(frozen=True)
class ProcessRef:
    """A launched attempt: the process group leader and its start time (guards pid reuse)."""

    job_id: int
    attempt: int
    pid: int
    started: float
    status_path: Path


@dataclass(frozen=True)
class UsageSample:
    """Resource use of an attempt's whole process tree so far."""

    cpu_s: float
    rss_mib: float
    wall_s: float


@dataclass(frozen=True)
class ExitStatus:
    state: EndState
    exit_code: int | None
    reason: str
    usage: UsageSample


class Executor(Protocol):
    name: ClassVar[str]
    supports_gang: ClassVar[bool]
    supports_preemption: ClassVar[bool]
    isolation: Isolation  # how attempts are sandboxed here (reported in ``nodes ls``)

    def workdir_for(self, job_id: int, attempt: int) -> Path:
        """Where the agent unpacks an attempt's working folder before :meth:`launch`."""
        ...

    def launch(self, spec: LaunchSpec) -> ProcessRef:
        """Start the attempt; returns at once with its process reference."""
        ...

    def poll(self, ref: ProcessRef) -> ExitStatus | None:
        """None while it runs; its end state once it has ended. Enforces max run time and the
        memory limit (ending the attempt as failed with the reason)."""
        ...

    def stop(self, ref: ProcessRef, *, state: EndState, reason: str, grace_s: float) -> None:
        """Ask the whole process tree to stop (SIGTERM), and kill it (SIGKILL) after
        ``grace_s``; returns at once. :meth:`poll` then reports ``state`` with ``reason``."""
        ...

    def adopt(self, ref: ProcessRef) -> bool:
        """After an agent restart: whether ``ref`` still runs (same pid, same start time); if
        so, later :meth:`poll` calls track it as if this executor had launched it."""
        ...

    def usage(self, ref: ProcessRef) -> UsageSample:
        """Resource use so far (CPU seconds of the whole tree, resident memory, wall time)."""
        ...

    def close(self) -> None:
        """Release what the executor holds (a connection, a cluster it started); attempts
        that run go on and a new executor can adopt them."""
        ...

"""The local executor: runs each attempt of a job as a process tree on this machine.

**The shim.** ``launch`` does not start the job itself: it starts :mod:`.shim` (by file path,
``python -I``, standard library only) as a session leader, and the shim starts the job in a
process group of its own, forwards SIGTERM to that group and, when the job ends, writes its exit
code or killing signal atomically to ``status.json``. The executor watches the shim by pid and
start time (psutil's ``create_time``, so a reused pid is not mistaken for it) and reads the
status file once the shim is gone. That is what lets an agent that restarted :meth:`adopt` an
attempt it did not spawn: nothing about the attempt lives only in this process's memory. A shim
that vanished without a status file means the attempt is ``lost``.

**Per-attempt files** (``run_dir/<job>.<attempt>/``): ``attempt.json`` (the limits the watchdog
enforces, written at launch; never secrets), ``stop.json`` (a requested stop: state, reason,
SIGKILL deadline, so a restarted agent reports and enforces it too) and ``status.json`` (the
shim's record of the end).

**Environment.** The job gets a small allow-list of the agent's variables (``PATH``, ``HOME``,
locale, ``TMPDIR``…; never the agent's own ``UNDERLAY_*`` settings or credentials), then
``spec.env``, then ``spec.secrets`` (only ever in the child's environment: not in argv, the log
header or any file), then the platform's device variables, which the job cannot override:
``CUDA_VISIBLE_DEVICES`` from the GPU UUIDs (preferred: stable across re-enumeration) or indexes
(with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so indexes mean what NVML means), and an empty value when
the job asked for no GPU, so it cannot grab one.

**Fractional GPUs are best effort.** Nothing here stops a process from using more of a GPU than
its share. For a share below 1 the job gets ``UNDERLAY_GPU_FRACTION`` and the settings frameworks
read at start-up: ``XLA_CLIENT_MEM_FRACTION`` and its older name
``XLA_PYTHON_CLIENT_MEM_FRACTION`` (JAX preallocates that share instead of 75%),
``TF_FORCE_GPU_ALLOW_GROWTH=true`` (TensorFlow allocates on demand instead of taking the whole
device; TF 2 has no environment setting for a fraction) and
``FLAGS_fraction_of_gpu_memory_to_use`` (PaddlePaddle). PyTorch has no such setting: its cap is
``torch.cuda.set_per_process_memory_fraction(fraction)`` called inside the process, which the
SDK does from ``UNDERLAY_GPU_FRACTION`` and a user script without the SDK must do itself.

**CPUs** are pinned with ``sched_setaffinity`` in the shim before the job starts (inherited by
its whole tree).

**Memory.** Where ``/sys/fs/cgroup`` is a writable cgroup v2 mount the job joins a cgroup of its
own with ``memory.max`` (and no swap), so the kernel enforces the limit exactly. Everywhere, the
watchdog in :meth:`LocalExecutor.poll` sums the resident memory of the job's process tree and
kills the tree when it exceeds the limit. The watchdog lives in ``poll``, not in the shim: it
needs psutil to walk the tree portably and the shim must stay standard-library-only; its
granularity is the agent's poll interval, and after an agent restart ``adopt`` resumes it from
``attempt.json``. Summed RSS counts pages shared between forked workers more than once, so it
errs on the side of killing; the cgroup measures exactly. ``RLIMIT_AS`` is not used: it limits
address space, which CUDA and JIT runtimes reserve far beyond what they touch.

**Stopping** (``stop``, the max run time, the memory limit) records the request, sends SIGTERM
to the job's process group through the shim and enforces the SIGKILL deadline in ``poll`` (no
timer threads, so thousands of jobs cost nothing between polls). SIGKILL goes to every process
group in the shim's tree, to each descendant, and through ``cgroup.kill`` where there is a
cgroup; without a cgroup a process that both left the group and was orphaned escapes.

**Isolation** (:mod:`.isolation`): the shim gets a ``--sandbox`` object for the node's mode,
and sets up the namespaces, hidden paths and uid drop itself; the working folder is handed to
the job's uid (0700) before launch, and ``HOME`` points at it. In mode ``none`` with
``require_isolation`` the executor refuses to launch.

``supports_gang`` is False: one attempt is one process tree; a spec with more than one worker
is refused. The Ray executor (:mod:`.ray_executor`) runs gangs, each worker through this
executor on its Ray node.

The shim's process tree (finding it, sampling it, killing it) is :mod:`.proctree`; the cgroup
v2 leaves are :mod:`.cgroups`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, get_args

import psutil

from underlay.compute.executors import cgroups, proctree, shim
from underlay.compute.executors.base import (
    EndState,
    ExitStatus,
    LaunchSpec,
    ProcessRef,
    UsageSample,
    new_attempt_folder,
)
from underlay.compute.executors.isolation import Isolation
from underlay.errors import InvalidInput, Unavailable

SHIM_PATH = Path(shim.__file__)
PASSTHROUGH = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}
)
LOST_REASON = "process disappeared without an exit status"

# Every shim this process started and has not reaped. A shim outlives the executor that
# started it (a new one adopts it), so its Popen must not be collected while it runs: that
# warns "subprocess is still running". Kept here, they are reaped as they end.
_CHILDREN: set[subprocess.Popen[bytes]] = set()
_CHILDREN_LOCK = threading.Lock()


def _reap_children() -> None:
    with _CHILDREN_LOCK:
        for child in [c for c in _CHILDREN if c.poll() is not None]:
            _CHILDREN.discard(child)  # ended and reaped by the poll


def _keep_child(popen: subprocess.Popen[bytes]) -> None:
    _reap_children()
    with _CHILDREN_LOCK:
        _CHILDREN.add(popen)


@dataclass
class _Stop:
    state: EndState
    reason: str
    kill_at: float


@dataclass
class _Attempt:
    """What this executor knows about one attempt; rebuilt from its files after a restart."""

    ref: ProcessRef
    memory_mib: int | None
    max_runtime_s: float | None
    cgroup: Path | None
    stop: _Stop | None = None
    popen: subprocess.Popen[bytes] | None = None
    peak_rss_mib: float = 0.0
    last: UsageSample | None = None
    final: ExitStatus | None = None

    @property
    def folder(self) -> Path:
        return self.ref.status_path.parent


class LocalExecutor:
    """Runs attempts as local process trees under a shim; see the module docstring.

    ``grace_s`` is the time between SIGTERM and SIGKILL when the max run time ends an attempt;
    ``use_cgroups=False`` turns off the cgroup v2 memory limit even where it is available.
    Thread-safe: one lock guards the per-attempt bookkeeping.
    """

    name: ClassVar[str] = "local"
    supports_gang: ClassVar[bool] = False
    supports_preemption: ClassVar[bool] = True

    def __init__(
        self,
        run_dir: Path,
        *,
        grace_s: float = 10.0,
        use_cgroups: bool = True,
        isolation: Isolation | None = None,
        work_dir: Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.isolation = isolation or Isolation(reason="no isolation was configured")
        self.work_dir = self.isolation.work_root or work_dir or self.run_dir / "work"
        self.grace_s = grace_s
        self.cgroup_parent = cgroups.find_parent() if use_cgroups else None
        self._attempts: dict[ProcessRef, _Attempt] = {}
        self._lock = threading.Lock()

    def workdir_for(self, job_id: int, attempt: int) -> Path:
        """Where an attempt's working folder goes (the job's uid must be able to reach it)."""
        return self.work_dir / f"job-{job_id}-{attempt}"

    def launch(self, spec: LaunchSpec) -> ProcessRef:
        validate(spec)
        if self.isolation.required and not self.isolation.isolated:
            raise Unavailable(
                "this node cannot isolate jobs and compute.require_isolation is set: "
                f"{self.isolation.reason}"
            )
        folder = new_attempt_folder(self.run_dir, spec)
        try:
            return self._start(spec, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def poll(self, ref: ProcessRef) -> ExitStatus | None:
        with self._lock:
            attempt = self._track(ref)
            if attempt.final is not None:
                return attempt.final
            if attempt.popen is not None:
                attempt.popen.poll()  # reap our own child so it does not linger as a zombie
            process = proctree.shim_process(ref)
            if process is not None:
                self._watch(attempt, process)
                return None
            attempt.final = self._ended(attempt)
            if attempt.popen is not None:
                # It may have turned zombie after the poll above: reap it now (it is gone, so
                # this returns at once), or it lingers and its Popen warns when collected.
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    attempt.popen.wait(timeout=5)
            attempt.popen = None
            _reap_children()  # an adopted attempt's shim may be our child all the same
            return attempt.final

    def stop(self, ref: ProcessRef, *, state: EndState, reason: str, grace_s: float) -> None:
        if state not in get_args(EndState):
            raise InvalidInput(f"cannot stop with state {state!r}; use one of {get_args(EndState)}")
        if not grace_s >= 0 or math.isinf(grace_s):
            raise InvalidInput(f"grace_s must be a finite number of seconds >= 0, not {grace_s}")
        with self._lock:
            attempt = self._track(ref)
            process = proctree.shim_process(ref)
            if attempt.final is not None or process is None or ref.status_path.exists():
                return  # it ended already; poll reports how
            if attempt.stop is None:
                self._request_stop(attempt, process, state, reason, grace_s)
                return
            # Stopped already (say, for its max run time): keep that reason, honour the
            # shorter deadline.
            attempt.stop.kill_at = min(attempt.stop.kill_at, time.time() + grace_s)
            self._save_stop(attempt)
            if time.time() >= attempt.stop.kill_at:
                proctree.kill_tree(process, attempt.cgroup)

    def adopt(self, ref: ProcessRef) -> bool:
        """True if ``ref``'s shim still runs (same pid and start time) and is now tracked.

        False when it does not; :meth:`poll` then still reports how it ended if its shim wrote a
        status (it finished while no agent watched), else ``lost``.
        """
        with self._lock:
            if proctree.shim_process(ref) is None:
                return False
            self._track(ref)
            return True

    def usage(self, ref: ProcessRef) -> UsageSample:
        """CPU seconds and wall time so far; resident memory now while it runs, its peak once
        it has ended."""
        with self._lock:
            attempt = self._track(ref)
            if attempt.final is not None:
                return attempt.final.usage
            process = proctree.shim_process(ref)
            if process is None:
                return self._final_usage(attempt, _read_json(ref.status_path))
            return self._sample(attempt, process)

    def close(self) -> None:
        """Nothing to release: attempts are process trees that outlive this object."""

    # -- launching -------------------------------------------------------------------------

    def _start(self, spec: LaunchSpec, folder: Path) -> ProcessRef:
        try:
            spec.workdir.mkdir(parents=True, exist_ok=True)
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot create {exc.filename}: {exc.strerror}") from exc
        sandbox = self.isolation.sandbox(spec.workdir, spec.project_id)
        if sandbox is not None:
            hand_over(spec.workdir, sandbox.get("uid"))
        name = f"job-{spec.job_id}-{spec.attempt}"
        cgroup = cgroups.make(self.cgroup_parent, name, spec.memory_mib)
        limits = {"memory_mib": spec.memory_mib, "max_runtime_s": spec.max_runtime_s}
        shim.write_atomically(
            str(folder / "attempt.json"), json.dumps({**limits, "cgroup": cgroup and str(cgroup)})
        )
        status_path = folder / "status.json"
        argv = [sys.executable, "-I", str(SHIM_PATH), "--status", str(status_path)]
        if spec.cpus:
            argv += ["--cpus", ",".join(str(c) for c in sorted(set(spec.cpus)))]
        if cgroup is not None:
            argv += ["--cgroup", str(cgroup)]
        if sandbox is not None:
            argv += ["--sandbox", json.dumps(sandbox)]
        argv += ["--", *spec.command]
        header = (
            f"[underlay] job {spec.job_id} attempt {spec.attempt} starting at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {shlex.join(spec.command)}\n"
        )
        with spec.log_path.open("ab") as log:
            log.write(header.encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    argv,
                    cwd=spec.workdir,
                    env=job_environment(spec, isolated=sandbox is not None),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise Unavailable(f"could not start job {spec.job_id}'s shim: {exc}") from exc
        _keep_child(popen)
        ref = ProcessRef(
            job_id=spec.job_id,
            attempt=spec.attempt,
            pid=popen.pid,
            started=psutil.Process(popen.pid).create_time(),  # readable even once it exited
            status_path=status_path,
        )
        attempt = _Attempt(ref, spec.memory_mib, spec.max_runtime_s, cgroup, popen=popen)
        with self._lock:
            self._attempts[ref] = attempt
        return ref

    # -- watching and stopping ---------------------------------------------------------------

    def _track(self, ref: ProcessRef) -> _Attempt:
        attempt = self._attempts.get(ref)
        if attempt is None:
            attempt = _load_attempt(ref)
            self._attempts[ref] = attempt
        return attempt

    def _watch(self, attempt: _Attempt, process: psutil.Process) -> None:
        """Enforce the max run time, the memory limit and a pending SIGKILL deadline."""
        sample = self._sample(attempt, process)
        if attempt.stop is None:
            limit = attempt.max_runtime_s
            if limit is not None and sample.wall_s > limit:
                reason = f"exceeded its max run time of {limit:g} s"
                self._request_stop(attempt, process, "failed", reason, self.grace_s)
            elif attempt.memory_mib is not None and sample.rss_mib > attempt.memory_mib:
                used = math.ceil(sample.rss_mib)
                reason = f"killed for memory: used {used} MiB, limit {attempt.memory_mib} MiB"
                self._request_stop(attempt, process, "failed", reason, 0.0)
        if attempt.stop is not None and time.time() >= attempt.stop.kill_at:
            proctree.kill_tree(process, attempt.cgroup)

    def _request_stop(
        self,
        attempt: _Attempt,
        process: psutil.Process,
        state: EndState,
        reason: str,
        grace_s: float,
    ) -> None:
        attempt.stop = _Stop(state, reason, time.time() + grace_s)
        self._save_stop(attempt)
        if grace_s > 0:
            with contextlib.suppress(psutil.Error):  # it may have ended meanwhile
                process.send_signal(signal.SIGTERM)  # the shim forwards it to the job's group
        else:
            proctree.kill_tree(process, attempt.cgroup)

    def _save_stop(self, attempt: _Attempt) -> None:
        stop = attempt.stop
        assert stop is not None
        record = {"state": stop.state, "reason": stop.reason, "kill_at": stop.kill_at}
        shim.write_atomically(str(attempt.folder / "stop.json"), json.dumps(record))

    def _sample(self, attempt: _Attempt, process: psutil.Process) -> UsageSample:
        sample = proctree.tree_usage(process, attempt.ref.started)
        if attempt.last is not None:  # CPU of orphaned descendants drops out of the tree
            sample = UsageSample(
                max(sample.cpu_s, attempt.last.cpu_s), sample.rss_mib, sample.wall_s
            )
        attempt.last = sample
        attempt.peak_rss_mib = max(attempt.peak_rss_mib, sample.rss_mib)
        return sample

    # -- ending ------------------------------------------------------------------------------

    def _ended(self, attempt: _Attempt) -> ExitStatus:
        record = _read_json(attempt.ref.status_path)
        usage = self._final_usage(attempt, record)
        oom_peak = cgroups.oom_peak(attempt.cgroup) if attempt.cgroup else None
        if attempt.cgroup is not None:
            cgroups.remove(attempt.cgroup)
        exit_code = record.get("exit_code") if record else None
        state: EndState = "failed"
        if attempt.stop is not None:
            state, reason = attempt.stop.state, attempt.stop.reason
        elif record is None:
            state, reason = "lost", LOST_REASON
        elif record.get("error"):
            reason = str(record["error"])
        elif exit_code == 0:
            state, reason = "succeeded", "exited with code 0"
        elif oom_peak is not None:
            used = math.ceil(max(oom_peak, usage.rss_mib))
            reason = f"killed for memory: used {used} MiB, limit {attempt.memory_mib} MiB"
        elif record.get("signal") is not None:
            reason = f"killed by {_signal_name(int(record['signal']))}"
        else:
            reason = f"exited with code {exit_code}"
        return ExitStatus(state=state, exit_code=exit_code, reason=reason, usage=usage)

    def _final_usage(self, attempt: _Attempt, record: dict[str, Any] | None) -> UsageSample:
        last = attempt.last or UsageSample(cpu_s=0.0, rss_mib=0.0, wall_s=0.0)
        if record is None:
            return UsageSample(last.cpu_s, attempt.peak_rss_mib, last.wall_s)
        return UsageSample(
            cpu_s=max(last.cpu_s, float(record["cpu_s"])),
            rss_mib=max(attempt.peak_rss_mib, float(record["max_rss_kib"]) / 1024),
            wall_s=max(0.0, float(record["ended"]) - attempt.ref.started),
        )


# -- helpers ---------------------------------------------------------------------------------


def validate(spec: LaunchSpec) -> None:
    """Raise InvalidInput for a spec this machine cannot run as asked."""
    if not spec.command or not spec.command[0]:
        raise InvalidInput("the job has no command: give the program to run and its arguments")
    if len(spec.workers) > 1:
        raise InvalidInput(
            f"a gang of {len(spec.workers)} workers needs an executor that supports gangs; "
            "this node runs the local executor: set compute.executor = 'ray'"
        )
    if spec.memory_mib <= 0:
        raise InvalidInput(f"memory_mib must be positive, not {spec.memory_mib}")
    if spec.max_runtime_s is not None and not spec.max_runtime_s > 0:
        raise InvalidInput(f"max_runtime_s must be positive or None, not {spec.max_runtime_s}")
    if spec.gpu_fraction is not None:
        if not 0 < spec.gpu_fraction <= 1:
            raise InvalidInput(f"gpu_fraction must be in (0, 1], not {spec.gpu_fraction}")
        if not (spec.gpu_uuids or spec.gpu_indexes):
            raise InvalidInput("a gpu_fraction needs a GPU: set gpu_uuids or gpu_indexes")
    allowed = os.sched_getaffinity(0)
    if unknown := sorted(set(spec.cpus) - allowed):
        raise InvalidInput(f"CPUs {unknown} are not available here; use some of {sorted(allowed)}")
    for kind, names in (("env", spec.env), ("secret", spec.secrets)):
        for name, value in names.items():
            if not name or "=" in name or "\0" in name or "\0" in value:
                # Never echo a value: it may be a secret.
                raise InvalidInput(f"{kind} variable {name!r} has an invalid name or value")


def job_environment(
    spec: LaunchSpec, inherited: Mapping[str, str] | None = None, *, isolated: bool = False
) -> dict[str, str]:
    """The job's environment: allow-listed ``inherited`` (default: the agent's), ``spec.env``,
    ``spec.secrets``, then the device settings, which the job cannot override. An isolated
    job's ``HOME`` is its working folder (the agent user's home is hidden from it)."""
    base = os.environ if inherited is None else inherited
    env = {k: v for k, v in base.items() if k in PASSTHROUGH or k.startswith("LC_")}
    if isolated:
        env["HOME"] = str(spec.workdir)
        env.pop("TMPDIR", None)  # the sandbox has a private /tmp
    env.update(spec.env)
    env.update(spec.secrets)
    env.update(gpu_environment(spec))
    return env


def hand_over(workdir: Path, uid: object) -> None:
    """Give the working folder (and what the agent unpacked in it) to the job's uid, 0700."""
    if not isinstance(uid, int) or os.geteuid() != 0:
        workdir.chmod(0o700)
        return
    for folder, dirs, files in os.walk(workdir):
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), uid, uid)  # noqa: PTH118
    os.chown(workdir, uid, uid)
    workdir.chmod(0o700)


def gpu_environment(spec: LaunchSpec) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` (empty: no GPU) and, for a share below 1, memory-fraction hints
    that frameworks honour at start-up (best effort; see the module docstring)."""
    devices = spec.gpu_uuids or tuple(str(i) for i in spec.gpu_indexes)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(devices), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if devices and spec.gpu_fraction is not None and spec.gpu_fraction < 1:
        share = f"{spec.gpu_fraction:.4g}"
        env |= {
            "UNDERLAY_GPU_FRACTION": share,
            "XLA_CLIENT_MEM_FRACTION": share,
            "XLA_PYTHON_CLIENT_MEM_FRACTION": share,
            "TF_FORCE_GPU_ALLOW_GROWTH": "true",
            "FLAGS_fraction_of_gpu_memory_to_use": share,
        }
    return env


def _load_attempt(ref: ProcessRef) -> _Attempt:
    """Rebuild an attempt's bookkeeping from its files (after a restart, or for a new ref)."""
    folder = ref.status_path.parent
    meta = _read_json(folder / "attempt.json") or {}
    cgroup = meta.get("cgroup")
    attempt = _Attempt(
        ref,
        memory_mib=meta.get("memory_mib"),
        max_runtime_s=meta.get("max_runtime_s"),
        cgroup=Path(cgroup) if cgroup else None,
    )
    stop = _read_json(folder / "stop.json")
    if stop is not None:
        attempt.stop = _Stop(stop["state"], stop["reason"], float(stop["kill_at"]))
    return attempt


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

"""The Ray executor: runs each admitted attempt on a Ray cluster, where our scheduler placed it.

**Admission is not launching.** Our scheduler has decided whether the job runs and on which of
our nodes (and accelerators) each worker goes; Ray only launches. Every Ray node names the node
of ours it stands for in a custom resource, ``underlay_node:<name>`` (see :mod:`.ray_cluster`),
and an attempt becomes one placement group with one bundle per worker, each bundle asking for a
sliver of its node's resource: the bundles can only land where our placement says, and the
group reserves all of them or none (a gang starts together). The strategy is ``STRICT_SPREAD``
when every worker has a node of its own, else ``PACK``. Ray is told nothing of CPUs or GPUs
(bundles ask for 0 CPUs): those are our scheduler's to count, and each worker gets
``CUDA_VISIBLE_DEVICES`` for exactly the accelerators our placement gave it.

**Each worker** is an :class:`~.ray_worker.AttemptWorker` actor in its bundle, which runs the
worker through the local executor on its node: the same shim, sandbox, environment, limits and
watchdog as a job of the local executor. The job's working folder is packed here and unpacked
there. Rank 0's actor picks a free port on its node: every worker gets ``MASTER_ADDR`` and
``MASTER_PORT`` (that address), ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE``, as PyTorch's ``init_process_group(init_method="env://")`` expects.

**Ends.** A gang ends when every worker has ended; when one fails first, the others are stopped
(SIGTERM, SIGKILL after the grace) and the attempt fails with that worker's reason. ``stop``
stops every worker the same way, and the attempt ends with the stop's state. A worker whose
actor died (its Ray node went away) is ``lost``.

**Logs and usage.** Each worker writes its log on its node; :meth:`RayExecutor.poll` copies new
bytes into the job's log here (each line prefixed ``[worker N]`` in a gang), which the agent
ships as it does for the local executor. Usage is the sum over workers (CPU seconds, resident
memory) and the longest wall time.

**Restarts.** Actors and placement groups are named and detached: they outlive the agent, and
``<run_dir>/<job>.<attempt>/ray.json`` (names, log offsets, a requested stop) lets a new agent
:meth:`~RayExecutor.adopt` them. Once an attempt has ended its end is kept in ``status.json``
there, and its actors and placement group are removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, get_args

from underlay.compute.executors import shim
from underlay.compute.executors.base import (
    EndState,
    ExitStatus,
    LaunchSpec,
    ProcessRef,
    UsageSample,
    Worker,
    new_attempt_folder,
)
from underlay.compute.executors.isolation import Isolation
from underlay.compute.executors.local import validate
from underlay.compute.executors.ray_cluster import (
    auth_environment,
    import_for_driver,
    node_resource,
)
from underlay.config import ComputeSettings
from underlay.errors import InvalidInput, Unavailable, UnderlayError

NAMESPACE = "underlay"
SLIVER = 0.001  # of a node's resource per worker: up to 1,000 workers on one node
CALL_TIMEOUT_S = 30.0
LOG_CHUNK = 1024 * 1024
LOG_READ_TICKS = 20  # polls an ended attempt waits for its workers' logs before it is reported
LOST_REASON = "no record of this Ray attempt on this agent"


@dataclass
class _Gang:
    """What this executor knows about one attempt; kept in ``ray.json`` beside its status."""

    ref: ProcessRef
    names: list[str]
    log_path: str
    nodes: list[str]
    offsets: list[int]
    partial: list[str] = field(default_factory=list)  # a gang's unfinished last lines
    stop: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    actors: list[Any] = field(default_factory=list)
    final: ExitStatus | None = None
    unread_ticks: int = 0  # polls since the workers ended that could not read their logs

    @property
    def folder(self) -> Path:
        return self.ref.status_path.parent

    def save(self) -> None:
        record = {
            "names": self.names,
            "log_path": self.log_path,
            "nodes": self.nodes,
            "offsets": self.offsets,
            "partial": self.partial,
            "stop": self.stop,
            "failure": self.failure,
        }
        shim.write_atomically(str(self.folder / "ray.json"), json.dumps(record))


class RayExecutor:
    """Runs attempts on a Ray cluster; see the module docstring.

    ``node`` is the name of our node this agent reports (a single worker without a placement
    runs there); ``address`` the cluster's GCS address (empty: start :attr:`cluster`);
    ``run_dir`` this agent's folder for attempt records; ``worker_dir`` the folder each Ray
    node keeps workers' files in.
    """

    name: ClassVar[str] = "ray"
    supports_gang: ClassVar[bool] = True
    supports_preemption: ClassVar[bool] = True

    def __init__(
        self,
        run_dir: Path,
        *,
        node: str,
        address: str,
        compute: ComputeSettings | None = None,
        home: Path | None = None,
        worker_dir: Path | None = None,
        node_ip: str | None = None,
        isolation: Isolation | None = None,
        start_timeout_s: float = 60.0,
        auth_token_path: Path | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.node, self.address, self.node_ip = node, address, node_ip
        self.compute = compute or ComputeSettings()
        self.home = home or self.run_dir
        self.worker_dir = worker_dir or self.run_dir / "workers"
        self.isolation = isolation or Isolation(reason="jobs run on Ray nodes (see ray_executor)")
        self.grace_s = self.compute.grace_s
        self.start_timeout_s = start_timeout_s
        self.auth_token_path = auth_token_path
        self._saved_env: dict[str, str | None] = {}
        self._gangs: dict[ProcessRef, _Gang] = {}
        self._connected = False
        self._owns_connection = False
        # A LocalRayCluster this executor starts when it first connects (``address`` empty),
        # and stops in close
        self.cluster: Any = None

    def workdir_for(self, job_id: int, attempt: int) -> Path:
        """Where the agent unpacks the working folder; launch ships it to every worker."""
        return self.run_dir / "work" / f"job-{job_id}-{attempt}"

    # -- the interface -----------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> ProcessRef:
        validate(replace(spec, workers=()))
        workers = spec.workers or (Worker(self.node, spec.gpu_indexes, spec.gpu_uuids),)
        folder = new_attempt_folder(self.run_dir, spec)
        try:
            return self._start(spec, workers, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def poll(self, ref: ProcessRef) -> ExitStatus | None:
        gang = self._track(ref)
        if gang.final is not None:
            return gang.final
        statuses = self._poll_workers(gang)
        if statuses is None:
            return None  # the cluster did not answer in time: ask again next tick
        complete = self._copy_logs(gang, ended=[s is not None for s in statuses])
        if any(s is None for s in statuses):
            self._stop_gang_on_failure(gang, statuses)
            return None
        if not complete and gang.unread_ticks < LOG_READ_TICKS:
            gang.unread_ticks += 1  # the end is reported with the whole log, or after a while
            return None
        final = _aggregate(gang, [s for s in statuses if s is not None])
        shim.write_atomically(str(ref.status_path), json.dumps(asdict(final)))
        gang.final = final
        self._remove(gang)
        return final

    def stop(self, ref: ProcessRef, *, state: EndState, reason: str, grace_s: float) -> None:
        if state not in get_args(EndState):
            raise InvalidInput(f"cannot stop with state {state!r}; use one of {get_args(EndState)}")
        if not grace_s >= 0 or math.isinf(grace_s):
            raise InvalidInput(f"grace_s must be a finite number of seconds >= 0, not {grace_s}")
        gang = self._track(ref)
        if gang.final is not None:
            return
        if gang.stop is None:
            gang.stop = {"state": state, "reason": reason}
            gang.save()
        stop = gang.stop
        self._call(gang, "stop", stop["state"], stop["reason"], grace_s)

    def adopt(self, ref: ProcessRef) -> bool:
        """True if the attempt's actors still run and are now tracked; :meth:`poll` reports
        the end of one that ended meanwhile (or ``lost`` when its actors are gone)."""
        gang = self._track(ref)
        return gang.final is None and len(gang.actors) == len(gang.names)

    def usage(self, ref: ProcessRef) -> UsageSample:
        gang = self._track(ref)
        if gang.final is not None:
            return gang.final.usage
        samples = [s for s in self._call(gang, "usage") if isinstance(s, UsageSample)]
        return _sum_usage(samples)

    def close(self) -> None:
        """Disconnect from the cluster, and stop the one this executor started, if any."""
        if self._owns_connection:
            import ray

            ray.shutdown()
            self._owns_connection = False
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        self._connected = False
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    # -- launching ---------------------------------------------------------------------------

    def _ray(self) -> Any:
        if not self._connected:
            self._connect()
        import ray

        return ray

    def _connect(self) -> None:
        """Connect this process to the cluster as a driver, unless it is connected already
        (one driver per process: executors in one process share it)."""
        for name, value in auth_environment(self.auth_token_path).items():
            # Ray reads its token settings from this process's environment, at import and
            # when its config is reloaded; jobs never see them (their environment is an
            # allow-list)
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        if not self.address and self.cluster is not None:
            self.address = self.cluster.start_head(self.node, num_cpus=os.cpu_count() or 1)
        if not self.address:
            raise Unavailable("no Ray cluster to run on: set compute.ray_address")
        ray = import_for_driver(self.address)
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        if not ray.is_initialized():
            Config.initialize("")  # take the token settings if ray was imported before
            # and this cluster's token: Ray keeps the first token it read for the process,
            # which is another cluster's when this process was a driver of one before
            AuthenticationTokenLoader.instance().reset_cache()
            options: dict[str, Any] = {"_node_ip_address": self.node_ip} if self.node_ip else {}
            ray.init(
                address=self.address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
                **options,
            )
            self._owns_connection = True
        self._connected = True

    def _start(self, spec: LaunchSpec, workers: tuple[Worker, ...], folder: Path) -> ProcessRef:
        ray = self._ray()
        from ray.util.placement_group import placement_group

        nodes = [w.node for w in workers]
        strategy = "STRICT_SPREAD" if len(set(nodes)) == len(nodes) > 1 else "PACK"
        base = f"underlay-{spec.job_id}-{spec.attempt}"
        group = placement_group(
            [{node_resource(n): SLIVER} for n in nodes],
            strategy=strategy,
            name=base,  # in the driver's namespace, NAMESPACE
            lifetime="detached",
        )
        gang = _Gang(
            ProcessRef(spec.job_id, spec.attempt, 0, 0.0, folder / "status.json"),
            names=[f"{base}-{rank}" for rank in range(len(workers))],
            log_path=str(spec.log_path),
            nodes=nodes,
            offsets=[0] * len(workers),
            partial=[""] * len(workers),
        )
        try:
            ready, _ = ray.wait([group.ready()], timeout=self.start_timeout_s)
            if not ready:
                raise Unavailable(
                    f"no Ray node offers {', '.join(sorted(map(node_resource, set(nodes))))} "
                    f"within {self.start_timeout_s:g} s: join each node to the Ray cluster with "
                    "ray start --resources '{\"underlay_node:<name>\": 1}'"
                )
            gang.actors = self._actors(spec, gang, group)
            refs = self._launch_workers(spec, workers, gang)
        except BaseException:
            self._remove(gang, group)
            raise
        gang.ref = replace(gang.ref, pid=refs[0].pid, started=refs[0].started)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec.log_path.touch()
        gang.save()
        self._gangs[gang.ref] = gang
        return gang.ref

    def _actors(self, spec: LaunchSpec, gang: _Gang, group: Any) -> list[Any]:
        ray = self._ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from underlay.compute.executors.ray_worker import AttemptWorker

        actor_class = ray.remote(AttemptWorker)
        actors = []
        for rank, (name, node) in enumerate(zip(gang.names, gang.nodes, strict=True)):
            folder = self.worker_dir / f"{spec.job_id}.{spec.attempt}.{rank}"
            actors.append(
                actor_class.options(
                    name=name,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    num_cpus=0,
                    resources={node_resource(node): SLIVER},
                    max_restarts=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        group, placement_group_bundle_index=rank
                    ),
                ).remote(str(folder), str(self.worker_dir), self.compute, str(self.home))
            )
        return actors

    def _launch_workers(
        self, spec: LaunchSpec, workers: tuple[Worker, ...], gang: _Gang
    ) -> list[ProcessRef]:
        ray = self._ray()
        host, port = self._get(gang.actors[0].rendezvous.remote())
        archive = ray.put(_pack(spec.workdir))
        local: dict[str, int] = {}
        calls = []
        for rank, worker in enumerate(workers):
            local_rank = local.get(worker.node, 0)
            local[worker.node] = local_rank + 1
            env = {
                **spec.env,
                "RANK": str(rank),
                "WORLD_SIZE": str(len(workers)),
                "LOCAL_RANK": str(local_rank),
                "LOCAL_WORLD_SIZE": str(sum(w.node == worker.node for w in workers)),
                "MASTER_ADDR": host,
                "MASTER_PORT": str(port),
                "UNDERLAY_NODE": worker.node,
            }
            one = replace(
                spec,
                env=env,
                gpu_indexes=worker.gpu_indexes,
                gpu_uuids=worker.gpu_uuids,
                workers=(),
            )
            calls.append(gang.actors[rank].launch.remote(one, archive))
        refs: list[ProcessRef] = self._get(calls)
        return refs

    def _get(self, calls: Any) -> Any:
        """``ray.get`` with a deadline; a worker's own error (InvalidInput, Unavailable...)
        comes back as itself."""
        ray = self._ray()
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(calls, timeout=CALL_TIMEOUT_S)
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, UnderlayError):
                raise cause from None
            raise Unavailable(f"a Ray worker failed: {cause}") from None
        except (GetTimeoutError, RayActorError) as exc:
            raise Unavailable(f"the Ray cluster did not start the workers: {exc}") from None

    # -- watching ------------------------------------------------------------------------------

    def _track(self, ref: ProcessRef) -> _Gang:
        gang = self._gangs.get(ref)
        if gang is not None:
            return gang
        folder = ref.status_path.parent
        record = _read_json(folder / "ray.json")
        if record is None:  # never launched here, or its records are gone: nothing to watch
            gang = _Gang(ref, names=[], log_path="", nodes=[], offsets=[])
            gang.final = ExitStatus("lost", None, LOST_REASON, UsageSample(0.0, 0.0, 0.0))
            self._gangs[ref] = gang
            return gang
        gang = _Gang(
            ref,
            names=list(record["names"]),
            log_path=str(record["log_path"]),
            nodes=list(record["nodes"]),
            offsets=[int(o) for o in record["offsets"]],
            partial=list(record.get("partial") or [""] * len(record["names"])),
            stop=record.get("stop"),
            failure=record.get("failure"),
        )
        ended = _read_json(ref.status_path)
        if ended is not None:
            gang.final = ExitStatus(**{**ended, "usage": UsageSample(**ended["usage"])})
        else:
            gang.actors = self._find_actors(gang.names)
        self._gangs[ref] = gang
        return gang

    def _find_actors(self, names: list[str]) -> list[Any]:
        ray = self._ray()
        found = []
        for name in names:
            with contextlib.suppress(ValueError):
                found.append(ray.get_actor(name, namespace=NAMESPACE))
        return found

    def _poll_workers(self, gang: _Gang) -> list[ExitStatus | None] | None:
        """Each worker's end (None: still runs); a worker whose actor is gone is lost. None
        when the cluster did not answer in time."""
        if len(gang.actors) != len(gang.names):
            lost = _lost(gang, "its Ray worker is gone (the Ray node or cluster went away)")
            return [lost] * len(gang.names)
        answers = self._call(gang, "poll")
        if any(a is _TIMEOUT for a in answers):
            return None
        return [
            _lost(gang, f"its Ray worker died: {a}") if isinstance(a, BaseException) else a
            for a in answers
        ]

    def _call(self, gang: _Gang, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every worker; each answer, the exception it raised, or
        ``_TIMEOUT``."""
        ray = self._ray()
        from ray.exceptions import GetTimeoutError, RayError

        calls = [getattr(actor, method).remote(*args) for actor in gang.actors]
        answers: list[Any] = []
        for call in calls:
            try:
                answers.append(ray.get(call, timeout=CALL_TIMEOUT_S))
            except GetTimeoutError:
                answers.append(_TIMEOUT)
            except RayError as exc:
                answers.append(exc)
        return answers

    def _stop_gang_on_failure(self, gang: _Gang, statuses: list[ExitStatus | None]) -> None:
        """A worker ended without success while others run: stop them (a gang lives and
        dies together); the attempt ends with that worker's state and reason."""
        if gang.failure is not None or gang.stop is not None:
            return
        for rank, status in enumerate(statuses):
            if status is not None and status.state != "succeeded":
                reason = _worker_reason(gang, rank, status.reason)
                gang.failure = {"state": status.state, "reason": reason}
                gang.save()
                self._call(gang, "stop", "failed", reason, self.grace_s)
                return

    def _copy_logs(self, gang: _Gang, ended: list[bool]) -> bool:
        """Append what each worker wrote since the last copy to the job's log; in a gang only
        whole lines (each prefixed with its worker), the rest once the worker has ended.
        False when a worker's log could not be read this time (a busy cluster)."""
        complete = True
        target = Path(gang.log_path)
        gang_size = len(gang.names)
        chunks: list[bytes] = []
        for rank, actor in enumerate(gang.actors):
            while True:
                try:
                    data = self._get(actor.read_log.remote(gang.offsets[rank], LOG_CHUNK))
                except Unavailable:
                    complete = False
                    break
                if not data:
                    break
                gang.offsets[rank] += len(data)
                if gang_size == 1:
                    chunks.append(data)
                    continue
                chunks.append(_prefixed(gang, rank, data.decode(errors="replace")))
            if gang_size > 1 and ended[rank] and gang.partial[rank]:
                chunks.append(_prefixed(gang, rank, "\n"))
        if chunks:
            with target.open("ab") as log:
                log.write(b"".join(chunks))
            gang.save()
        return complete

    # -- ending --------------------------------------------------------------------------------

    def _remove(self, gang: _Gang, group: Any = None) -> None:
        """Kill the attempt's actors and remove its placement group (best effort)."""
        ray = self._ray()
        from ray.util.placement_group import get_placement_group, remove_placement_group

        for actor in gang.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        gang.actors = []
        if group is None:
            with contextlib.suppress(Exception):
                group = get_placement_group(gang.names[0].rsplit("-", 1)[0])
        if group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(group)


_TIMEOUT = object()


def _prefixed(gang: _Gang, rank: int, text: str) -> bytes:
    """Whole lines of ``text`` (after what was left of the last one), each ``[worker N]``."""
    text = gang.partial[rank] + text
    *lines, gang.partial[rank] = text.split("\n")
    return "".join(f"[worker {rank}] {line}\n" for line in lines).encode()


def _worker_reason(gang: _Gang, rank: int, reason: str) -> str:
    if len(gang.names) == 1:
        return reason
    return f"worker {rank} (node {gang.nodes[rank]}) {reason}"


def _lost(gang: _Gang, reason: str) -> ExitStatus:
    return ExitStatus("lost", None, reason, UsageSample(0.0, 0.0, 0.0))


def _aggregate(gang: _Gang, statuses: list[ExitStatus]) -> ExitStatus:
    """The attempt's end from its workers' ends (see the module docstring)."""
    usage = _sum_usage([s.usage for s in statuses])
    exit_code = statuses[0].exit_code
    if gang.failure is not None:
        return ExitStatus(gang.failure["state"], exit_code, gang.failure["reason"], usage)
    if gang.stop is not None:
        return ExitStatus(gang.stop["state"], exit_code, gang.stop["reason"], usage)
    for rank, status in enumerate(statuses):
        if status.state != "succeeded":
            reason = _worker_reason(gang, rank, status.reason)
            return ExitStatus(status.state, status.exit_code, reason, usage)
    return ExitStatus("succeeded", 0, "exited with code 0", usage)


def _sum_usage(samples: list[UsageSample]) -> UsageSample:
    return UsageSample(
        cpu_s=sum(s.cpu_s for s in samples),
        rss_mib=sum(s.rss_mib for s in samples),
        wall_s=max((s.wall_s for s in samples), default=0.0),
    )


def _pack(workdir: Path) -> bytes:
    """The working folder as a tar archive ('' when it is empty or absent)."""
    if not workdir.is_dir() or not any(workdir.iterdir()):
        return b""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry in sorted(workdir.iterdir()):
            tar.add(entry, arcname=entry.name)
    return buffer.getvalue()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

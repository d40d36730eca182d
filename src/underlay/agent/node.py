"""The node agent: reports this machine's inventory, runs the attempts placed on it, and
reports how they end. ``underlay agent --server URL`` runs one; ``underlay up`` runs one for
the local machine. It talks to the server only through the REST API.

An attempt the server answers 404 for (its project was deleted) is stopped and forgotten:
ids are never reused, so that answer is final, and the agent keeps ticking without it.

Nothing runs twice: before an attempt is reported as started, its process reference is
written to the agent's run folder; a restarted agent that is asked to launch an attempt it
already has a reference for adopts that process instead, and the server only asks to launch
attempts that were never reported as started.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import tarfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.compute.executors.base import (
    EndState,
    Executor,
    ExitStatus,
    LaunchSpec,
    ProcessRef,
    Worker,
)
from underlay.compute.inventory import NodeInventory, probe_node
from underlay.compute.schemas import AttemptEnded, AttemptRef, LaunchInfo
from underlay.config import Settings
from underlay.errors import Conflict, NotFound, Unavailable, UnderlayError

if TYPE_CHECKING:
    from underlay.client import Client

log = logging.getLogger(__name__)
LOG_SHIP_MAX = 1024 * 1024
UNREACHABLE_WARN_S = 10.0
"""How long the server may be unreachable before the agent warns (once per outage)."""


def _log_unreachable(exc: Unavailable, outage: list[float]) -> None:
    """Quiet while the outage is short (the built-in agent starts before its server listens
    and stops after it closed); one warning once it lasts ``UNREACHABLE_WARN_S``."""
    now = time.monotonic()
    if not outage:
        outage.append(now)
    if now - outage[0] < UNREACHABLE_WARN_S or len(outage) > 1:
        log.debug("agent cannot reach the server: %s", exc)
        return
    outage.append(now)
    log.warning("agent tick failed: %s", exc)


class NodeAgent:
    """One node's agent; call :meth:`tick` periodically, or :meth:`run` in a thread."""

    def __init__(
        self, client: Client, settings: Settings, executor: Executor, name: str, run_dir: Path
    ) -> None:
        self.client, self.settings, self.executor, self.name = client, settings, executor, name
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tracked: dict[int, ProcessRef] = {}
        self.stopping: set[int] = set()
        self.shipped: dict[int, int] = {}
        self.gone: set[int] = set()  # attempts the server no longer has
        self.power: dict[int, list[tuple[float, float]]] = {}
        self._inventory: NodeInventory | None = None
        self._stop = threading.Event()
        self._swept = False  # attempts left from before a restart were looked at

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Tick until :meth:`stop`, holding this node's agent lock so only one agent runs."""
        with (self.run_dir / "agent.lock").open("w") as lock:
            while not self._stop.is_set():
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    self._stop.wait(2.0)
            interval = min(1.0, self.settings.compute.heartbeat_interval_s)
            outage: list[float] = []  # when the server stopped answering, then "warned"
            while not self._stop.is_set():
                try:
                    self.tick()
                    outage.clear()
                except Unavailable as exc:
                    _log_unreachable(exc, outage)
                except UnderlayError as exc:
                    log.warning("agent tick failed: %s", exc)
                except Exception:
                    log.exception("agent tick failed")
                self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()

    def stop_jobs(self, job_ids: set[int], reason: str, grace_s: float) -> set[int]:
        """Stop this node's attempts of ``job_ids`` now and wait until they have ended (SIGTERM
        to each process group, SIGKILL after ``grace_s``); returns the jobs stopped. Called
        once :meth:`run` has returned, when the server stops: the attempts' ends are not
        reported here (the server no longer answers) but by the next agent, which finds them
        ended when it adopts them, with ``reason``."""
        stopping = {a: r for a, r in self.tracked.items() if r.job_id in job_ids}
        for ref in stopping.values():
            self.executor.stop(ref, state="cancelled", reason=reason, grace_s=grace_s)
        deadline = time.monotonic() + grace_s + 5.0
        while stopping and time.monotonic() < deadline:
            for attempt_id, ref in list(stopping.items()):
                if self.executor.poll(ref) is not None:  # enforces the SIGKILL deadline
                    del stopping[attempt_id]
            if stopping:
                time.sleep(0.05)
        return {r.job_id for r in self.tracked.values() if r.job_id in job_ids}

    def tick(self) -> None:
        inventory = replace(
            probe_node(self.settings, self.name), isolation=self.executor.isolation.mode
        )
        self._inventory = inventory
        work = self.client.heartbeat(self.name, inventory.to_dict())
        expected = {r.attempt_id for r in work.running} | {i.attempt_id for i in work.launch}
        if not self._swept:
            self._swept = True
            self._stop_unknown(expected)
        for attempt_id, orphan in list(self.tracked.items()):
            if attempt_id not in expected and attempt_id not in self.stopping:
                # the server gave this attempt up (e.g. this node was judged lost): stop it,
                # or it would run beside its retry
                self.stopping.add(attempt_id)
                self.executor.stop(
                    orphan,
                    state="lost",
                    reason="the server gave this attempt up",
                    grace_s=self.settings.compute.grace_s,
                )
        for ref in work.running:
            if ref.attempt_id not in self.tracked:
                self._adopt(ref)
            if ref.stop and ref.attempt_id in self.tracked and ref.attempt_id not in self.stopping:
                self.stopping.add(ref.attempt_id)
                state: EndState = "cancelled" if ref.stop == "cancel" else "preempted"
                self.executor.stop(
                    self.tracked[ref.attempt_id],
                    state=state,
                    reason=ref.stop_reason,
                    grace_s=ref.grace_s,
                )
        for info in work.launch:
            try:
                self._launch(info)
            except Unavailable:
                raise
            except UnderlayError as exc:
                # one attempt the server refuses must not stop this tick from watching and
                # reporting the others (a stopped replica's end went unreported for good)
                log.warning("attempt %s: %s", info.attempt_id, exc)
        self._sample_power(inventory)
        self._poll()
        self._ship_logs()

    # -- launching and adopting ----------------------------------------------------------

    def _ref_path(self, attempt_id: int) -> Path:
        return self.run_dir / f"attempt-{attempt_id}.json"

    def _launch(self, info: LaunchInfo) -> None:
        if self._ref_path(info.attempt_id).exists():
            # launched before a crash but never reported: adopt, never start twice
            self._adopt(
                AttemptRef(
                    attempt_id=info.attempt_id,
                    job_id=info.job_id,
                    attempt=info.attempt,
                    pid=None,
                    pid_started=None,
                )
            )
            return
        workdir = self.executor.workdir_for(info.job_id, info.attempt)
        try:
            self._prepare_workdir(info, workdir)
            spec = LaunchSpec(
                job_id=info.job_id,
                attempt=info.attempt,
                command=tuple(info.command),
                workdir=workdir,
                log_path=self.run_dir / f"job-{info.job_id}-{info.attempt}.log",
                env=info.env,
                secrets=info.secrets,
                cpu_milli=info.cpu_milli,
                memory_mib=info.memory_mib,
                gpu_indexes=tuple(info.gpu_indexes),
                gpu_uuids=tuple(info.gpu_uuids),
                gpu_fraction=info.gpu_fraction,
                max_runtime_s=info.max_runtime_s,
                project_id=info.project_id,
                workers=tuple(
                    Worker(w.node, tuple(w.gpu_indexes), tuple(w.gpu_uuids)) for w in info.workers
                ),
            )
            ref = self.executor.launch(spec)
        except (OSError, UnderlayError) as exc:
            self._report(
                info.attempt_id,
                AttemptEnded(state="failed", reason=f"could not start: {exc}"[:1000]),
            )
            return
        self._ref_path(info.attempt_id).write_text(
            json.dumps(
                {
                    **asdict(ref),
                    "status_path": str(ref.status_path),
                    "log_path": str(spec.log_path),
                    "gpu_indexes": list(spec.gpu_indexes),
                    "gpu_fraction": spec.gpu_fraction,
                }
            )
        )
        self.tracked[info.attempt_id] = ref
        self._started(info.attempt_id, ref.pid, ref.started)

    def _prepare_workdir(self, info: LaunchInfo, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if info.workdir_digest:
            data = self.client.attempt_workdir(self.name, info.attempt_id)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
                archive.extractall(workdir, filter="data")  # no traversal, no devices

    def _adopt(self, ref: AttemptRef) -> None:
        path = self._ref_path(ref.attempt_id)
        if not path.exists():
            if ref.stop == "cancel":  # cancelled while admitted, before it was launched here
                ended = AttemptEnded(state="cancelled", reason=ref.stop_reason[:1000])
            else:
                reason = "the node agent restarted and has no record of it"
                ended = AttemptEnded(state="lost", reason=reason)
            self._report(ref.attempt_id, ended)
            return
        pref = _load_ref(path)
        self.executor.adopt(pref)  # alive or not, poll() now reports its end
        self.tracked[ref.attempt_id] = pref
        self.shipped[ref.attempt_id] = ref.log_offset  # resume the log where the server is
        if not ref.pid:
            self._started(ref.attempt_id, pref.pid, pref.started)

    def _stop_unknown(self, expected: set[int]) -> None:
        """On the first heartbeat: attempts this node started before a restart that the server
        no longer expects (it judged the node lost while no agent ran, and retried or ended
        them) are stopped, or they would run on beside their replacements; their ends are
        reported as usual (the server ignores a report for an attempt it has ended)."""
        for path in sorted(self.run_dir.glob("attempt-*.json")):
            number = path.stem.removeprefix("attempt-")
            if not number.isdigit() or int(number) in expected or int(number) in self.tracked:
                continue
            attempt_id = int(number)
            try:
                ref = _load_ref(path)
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # unreadable: written by a crashed launch
                continue
            self.executor.adopt(ref)
            self.tracked[attempt_id] = ref
            self.stopping.add(attempt_id)
            log.info("attempt %s is no longer expected by the server; stopping it", attempt_id)
            self.executor.stop(
                ref,
                state="lost",
                reason="the server gave this attempt up while the node agent was down",
                grace_s=self.settings.compute.grace_s,
            )

    def _started(self, attempt_id: int, pid: int, started: float) -> None:
        try:
            self.client.attempt_started(self.name, attempt_id, pid, started)
        except NotFound:
            self._forget(attempt_id)
        except Conflict as exc:  # its job was cancelled after it was handed to this node
            log.info("attempt %s may not run (%s); stopping it", attempt_id, exc)
            ref = self.tracked.get(attempt_id)
            if ref is not None and attempt_id not in self.stopping:
                self.stopping.add(attempt_id)
                self.executor.stop(ref, state="cancelled", reason=str(exc)[:1000], grace_s=0.0)

    def _forget(self, attempt_id: int) -> None:
        """The server has no such attempt any more (its project was deleted): stop its
        process; once it has ended, :meth:`_poll` drops it without reporting."""
        log.info("attempt %s is gone from the server; stopping it", attempt_id)
        self.gone.add(attempt_id)
        ref = self.tracked.get(attempt_id)
        if ref is not None and attempt_id not in self.stopping:
            self.stopping.add(attempt_id)
            self.executor.stop(
                ref,
                state="cancelled",
                reason="the server no longer has this attempt",
                grace_s=self.settings.compute.grace_s,
            )

    # -- watching ------------------------------------------------------------------------

    def _sample_power(self, inventory: NodeInventory) -> None:
        now = time.time()
        watts = {a.index: a.power_watts for a in inventory.accelerators if a.power_watts}
        if not watts:
            return
        for attempt_id in self.tracked:
            saved = self._saved(attempt_id)
            gpus: list[int] = saved.get("gpu_indexes", [])
            share: float = saved.get("gpu_fraction") or 1.0
            total = sum(watts.get(g, 0.0) for g in gpus) * share
            if gpus and total:
                self.power.setdefault(attempt_id, []).append((now, total))

    def _saved(self, attempt_id: int) -> dict[str, Any]:
        path = self._ref_path(attempt_id)
        return json.loads(path.read_text()) if path.exists() else {}

    def _poll(self) -> None:
        for attempt_id, ref in list(self.tracked.items()):
            status = self.executor.poll(ref)
            if status is not None:
                self._ship_logs(only=attempt_id)
                self._report(attempt_id, self._ended(attempt_id, status))
                self.tracked.pop(attempt_id, None)
                self.stopping.discard(attempt_id)
                self.gone.discard(attempt_id)
                self.shipped.pop(attempt_id, None)
                self._ref_path(attempt_id).unlink(missing_ok=True)

    def _ended(self, attempt_id: int, status: ExitStatus) -> AttemptEnded:
        from underlay.compute.ledger import integrate_power_kwh

        samples = self.power.pop(attempt_id, [])
        energy = integrate_power_kwh(samples) if len(samples) >= 2 else None
        return AttemptEnded(
            state=status.state,
            exit_code=status.exit_code,
            reason=status.reason[:1000],
            wall_s=status.usage.wall_s,
            cpu_s=status.usage.cpu_s,
            energy_kwh=energy,
            energy_estimated=energy is None,
        )

    def _report(self, attempt_id: int, report: AttemptEnded) -> None:
        if attempt_id in self.gone:
            return
        try:
            self.client.attempt_ended(self.name, attempt_id, report)
        except NotFound:
            log.info("attempt %s ended after the server gave it up; not reported", attempt_id)
        except Conflict as exc:  # the server will never take this end: do not retry it
            log.warning("attempt %s ended; the server refused the report: %s", attempt_id, exc)

    def _ship_logs(self, only: int | None = None) -> None:
        for attempt_id in [only] if only is not None else list(self.tracked):
            saved = self._saved(attempt_id)
            path = Path(str(saved.get("log_path", "")))
            if not saved or not path.exists() or attempt_id in self.gone:
                continue
            offset = self.shipped.get(attempt_id, 0)
            try:
                with contextlib.suppress(OSError), path.open("rb") as handle:
                    handle.seek(offset)
                    while chunk := handle.read(LOG_SHIP_MAX):
                        self.client.append_logs(self.name, attempt_id, chunk, offset)
                        offset += len(chunk)
            except NotFound:
                self._forget(attempt_id)
            self.shipped[attempt_id] = offset


def _load_ref(path: Path) -> ProcessRef:
    """The process reference an agent saved when it launched an attempt."""
    saved = json.loads(path.read_text())
    return ProcessRef(
        int(saved["job_id"]),
        int(saved["attempt"]),
        int(saved["pid"]),
        float(saved["started"]),
        Path(saved["status_path"]),
    )

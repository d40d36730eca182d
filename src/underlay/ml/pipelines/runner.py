"""Drive an ML pipeline: walk its graph, run each call as a job (or here), record it all.

The driver runs on the caller's side (the CLI or a script), with the caller's permissions;
the server only keeps the record (:mod:`underlay.ml.pipelines.service`). For each call whose
inputs are ready it asks the server to record the call: the server answers ``cached`` when the
same code ran on the same inputs and params before (no job then), or ``skipped`` when an input
failed. Otherwise the call runs:

* **as a job** (the default): ``underlay pipelines step FILE --run R --key K`` in the folder of
  the pipeline's file, with the step's resource request, and its ``retries`` as the job's;
  every ready call is submitted at once, so independent steps and a sweep's trials run side by
  side as the scheduler places them;
* **here** (``local``): in this process, one at a time, retried in place.

A sweep fans out into trials ``NAME.0``, ``NAME.1``...; once they have all ended the best
(by the metric each returned or logged) stands for the sweep, and is recorded on the run.
A failing call does not stop independent ones; what reads its outputs is skipped, and the run
ends ``failed``.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.errors import InvalidInput, Unavailable, UnderlayError
from underlay.ml.pipelines import execute
from underlay.ml.pipelines.dsl import Call, Graph, Handle, Pipeline

if TYPE_CHECKING:
    from underlay.client import Client
    from underlay.compute.schemas import JobRead
    from underlay.ml.pipelines.schemas import RunRead, StepRead

Event = Callable[[str], None]
JOB_TERMINAL = ("succeeded", "failed", "cancelled", "lost")
POLL_S = 0.2


@dataclass
class _Sweep:
    call: Call
    trials: list[str]
    best: str | None = None
    best_value: float | None = None


@dataclass
class _State:
    resolved: dict[str, str] = field(default_factory=dict)  # call -> the step key it reads
    failed: dict[str, str] = field(default_factory=dict)  # call -> a step key that failed
    running: dict[str, int] = field(default_factory=dict)  # step key -> job id
    records: dict[str, StepRead] = field(default_factory=dict)
    sweeps: dict[str, _Sweep] = field(default_factory=dict)


class Driver:
    """One run of ``pipeline`` in ``project``; see the module docstring."""

    def __init__(
        self,
        client: Client,
        project: str,
        pipeline: Pipeline,
        *,
        file: Path | None = None,
        local: bool = False,
        workdir_digest: str | None = None,
    ) -> None:
        if not local and file is None:
            raise InvalidInput("a pipeline runs as jobs from its file: give its path, or local")
        self.client = client
        self.project = project
        self.pipeline = pipeline
        self.file = file
        self.local = local
        self.workdir_digest = workdir_digest
        self.state = _State()
        self.say: Event = lambda _line: None
        self.job_env: dict[str, str] = {}
        self.signing_key = ""
        self.run_id = 0

    def run(
        self,
        params: dict[str, Any],
        *,
        job_env: dict[str, str] | None = None,
        on_event: Event | None = None,
        timeout_s: float | None = None,
    ) -> RunRead:
        """Build and check the graph, then run it; the run's record. Raises only when the
        run cannot start (a bad graph, no permission)."""
        graph = self.pipeline.graph(params)
        if on_event is not None:
            self.say = on_event
        self.job_env = dict(job_env or {})
        if not self.local and self.workdir_digest is None:
            raise InvalidInput("steps run as jobs in an uploaded folder: give its digest")
        mode = "local" if self.local else "jobs"
        body = {"pipeline": self.pipeline.name, "mode": mode, "params": graph.params}
        record = self.client.create_ml_run(self.project, body)
        self.run_id, self.signing_key = record.id, record.signing_key
        self.say(f"run m{record.id} of pipeline {self.pipeline.name} ({mode})")
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        try:
            self._walk(graph, deadline)
        except BaseException as error:  # a time-out, Ctrl-C or SIGTERM: stop what runs
            self._cancel_running()
            reason = execute.describe(error) if isinstance(error, Exception) else "interrupted"
            self._finish(graph, "failed", reason, started)
            raise
        failed = self._failures(graph)
        status = "failed" if failed else "succeeded"
        return self._finish(graph, status, "; ".join(failed)[:2000], started)

    # -- the walk ---------------------------------------------------------------------------

    def _walk(self, graph: Graph, deadline: float | None) -> None:
        waiting = list(graph.order)
        while waiting or self.state.running:
            for key in list(waiting):
                call = graph.calls[key]
                if all(self._settled(up) for up in call.upstream()):
                    waiting.remove(key)
                    self._start(call)
            for key in list(self.state.sweeps):
                self._settle_sweep(key)
            if self.state.running:
                if deadline is not None and time.monotonic() > deadline:
                    raise Unavailable(
                        "the pipeline timed out; its running jobs were cancelled", timed_out=True
                    )
                time.sleep(POLL_S)
                self._poll()

    def _settled(self, call: str) -> bool:
        return call in self.state.resolved or call in self.state.failed

    def _start(self, call: Call) -> None:
        inputs = {}
        for arg, handle in call.inputs.items():
            source = self.state.resolved.get(handle.call) or self.state.failed[handle.call]
            assert isinstance(handle, Handle)  # refs are resolved when the graph is built
            inputs[arg] = {"step": source, "output": handle.selected()}
        if call.sweep is None:
            self._launch(call, call.key, call.params, inputs, None)
            return
        keys = [f"{call.key}.{i}" for i in range(len(call.sweep.trials))]
        self.state.sweeps[call.key] = _Sweep(call, keys)
        for key, trial in zip(keys, call.sweep.trials, strict=True):
            self._launch(call, key, {**call.params, **trial}, inputs, call.key)

    def _launch(
        self,
        call: Call,
        key: str,
        params: dict[str, Any],
        inputs: dict[str, dict[str, str]],
        sweep: str | None,
    ) -> None:
        step = call.step
        body = {
            "key": key,
            "step": step.name,
            "sweep": sweep,
            "code_digest": step.code_digest(),
            "params": params,
            "inputs": inputs,
            "resources": {**step.resources.job_options(), "retries": step.retries},
            "cache": step.cache,
        }
        record = self.client.create_ml_step(self.project, self.run_id, body)
        self.state.records[key] = record
        if record.status == "cached":
            self.say(f"step {key}: cached, skipped (outputs of run m{record.cached_from_run})")
            self._done(key, record)
        elif record.status == "skipped":
            self.say(f"step {key}: skipped ({record.error})")
            self._done(key, record)
        elif self.local:
            self._done(key, self._run_here(call, record))
        else:
            self._submit(call, key)

    def _submit(self, call: Call, key: str) -> None:
        """Submit a call's job; a job the scheduler refuses fails the step with its reason."""
        step = call.step
        file_name = self.file.name if self.file is not None else ""
        command = ["underlay", "pipelines", "step", file_name, "-p", self.project]
        try:
            job = self.client.submit_job(
                self.project,
                [*command, "--run", str(self.run_id), "--key", key],
                name=f"{self.pipeline.name}.{key}"[:63],
                env=self.job_env,
                workdir_digest=self.workdir_digest,
                max_retries=step.retries,
                **step.resources.job_options(),
            )
        except UnderlayError as refused:  # e.g. no node of the cluster could ever run it
            self.say(f"step {key}: failed (its job was refused: {refused})")
            body = {"status": "failed", "error": f"its job was refused: {refused}"[:2000]}
            self._done(key, self.client.finish_ml_step(self.project, self.run_id, key, body))
            return
        self.state.records[key] = self.client.start_ml_step(self.project, self.run_id, key, job.id)
        self.state.running[key] = job.id
        self.say(f"step {key}: job {job.id} submitted")

    def _done(self, key: str, record: StepRead) -> None:
        """A step key has ended: a plain call is resolved or failed with it."""
        self.state.records[key] = record
        if "." in key:
            return  # a trial: its sweep settles when all have ended
        if record.status in ("succeeded", "cached"):
            self.state.resolved[key] = key
        else:
            self.state.failed[key] = key

    def _settle_sweep(self, name: str) -> None:
        sweep = self.state.sweeps[name]
        records = [self.state.records[k] for k in sweep.trials]
        if any(r.status in ("pending", "running") for r in records) or self._settled(name):
            return
        spec = sweep.call.sweep
        assert spec is not None
        scored = [
            (r.metrics[spec.metric], r.key)
            for r in records
            if r.status in ("succeeded", "cached") and spec.metric in r.metrics
        ]
        if not scored:
            self.state.failed[name] = sweep.trials[0]
            self.say(f"sweep {name}: no trial succeeded with metric {spec.metric!r}")
            return
        sign = 1.0 if spec.mode == "max" else -1.0
        # the best value; on a tie, the earlier trial
        value, best = max(scored, key=lambda item: (sign * item[0], -_trial(item[1])))
        sweep.best, sweep.best_value = best, value
        self.state.resolved[name] = best
        self.say(f"sweep {name}: best {best} ({spec.metric}={value:g})")

    # -- jobs ---------------------------------------------------------------------------------

    def _poll(self) -> None:
        for key, job_id in list(self.state.running.items()):
            job = self.client.read_job(self.project, job_id)
            if job.state not in JOB_TERMINAL or (
                job.state in ("failed", "lost") and job.attempts <= job.max_retries
            ):
                continue
            del self.state.running[key]
            record = self.client.read_ml_step(self.project, self.run_id, key)
            if record.status in ("pending", "running"):
                record = self._fail(key, job)
            else:
                self.say(f"step {key}: {record.status} (job {job_id})")
            self._done(key, record)

    def _fail(self, key: str, job: JobRead) -> StepRead:
        """A step's job ended without recording outputs: the step fails with the last line
        of the job's log, and the attempts it took."""
        last = _last_line(self.client, self.project, job.id)
        tries = f"after {job.attempts} attempt{'s' if job.attempts != 1 else ''}"
        error = f"job {job.id} {job.state} {tries}" + (f": {last}" if last else "")
        if job.reason and not last:
            error += f" ({job.reason})"
        self.say(f"step {key}: failed ({error})")
        body = {"status": "failed", "error": error[:2000], "attempts": job.attempts}
        return self.client.finish_ml_step(self.project, self.run_id, key, body)

    def _cancel_running(self) -> None:
        for key, job_id in list(self.state.running.items()):
            try:
                job = self.client.cancel_job(self.project, job_id)
                self.client.finish_ml_step(
                    self.project,
                    self.run_id,
                    key,
                    {"status": "failed", "error": f"cancelled with the run (job {job.id})"},
                )
            except Exception:  # noqa: S112 - best effort while stopping
                continue
        self.state.running.clear()

    # -- here -----------------------------------------------------------------------------------

    def _run_here(self, call: Call, record: StepRead) -> StepRead:
        """Run a call in this process, retried in place as often as the step says."""
        started = time.monotonic()
        error = ""
        attempts = call.step.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                outputs, metrics = execute.run_call(
                    self.client, self.project, record, call.step, self.signing_key
                )
            except Exception as caught:  # the user-code boundary: a failed step, not a crash
                error = execute.describe(caught)
                self.say(traceback.format_exc().rstrip())
                self.say(f"step {record.key}: attempt {attempt} of {attempts} failed: {error}")
                continue
            done = execute.finish_success(
                self.client, self.project, self.run_id, record, outputs, metrics, attempt, started
            )
            self.say(f"step {record.key}: succeeded in {done.duration_s or 0:.2f} s")
            return done
        body = {
            "status": "failed",
            "error": f"after {attempts} attempt{'s' if attempts > 1 else ''}: {error}"[:2000],
            "attempts": attempts,
            "duration_s": round(time.monotonic() - started, 6),
        }
        return self.client.finish_ml_step(self.project, self.run_id, record.key, body)

    # -- the end --------------------------------------------------------------------------------

    def _failures(self, graph: Graph) -> list[str]:
        """What made the run fail: each call that failed itself (not one skipped because an
        input failed), and each sweep none of whose trials gave its metric."""
        found = []
        for key in graph.order:
            if key not in self.state.failed:
                continue
            if key in self.state.sweeps:
                trials = [self.state.records[k] for k in self.state.sweeps[key].trials]
                if all(t.status == "skipped" for t in trials):
                    continue
                failed = [t for t in trials if t.status == "failed"]
                metric = graph.calls[key].sweep.metric  # type: ignore[union-attr]
                why = (
                    failed[0].error
                    if len(failed) == len(trials)
                    else f"no trial gave metric {metric!r}"
                )
                found.append(f"sweep {key}: {why}")
            elif (record := self.state.records[key]).status == "failed":
                found.append(f"step {key}: {record.error}")
        return found

    def _finish(self, graph: Graph, status: str, error: str, started: float) -> RunRead:
        sweeps = []
        for name, sweep in self.state.sweeps.items():
            spec = sweep.call.sweep
            assert spec is not None
            sweeps.append(
                {
                    "name": name,
                    "step": sweep.call.step.name,
                    "metric": spec.metric,
                    "mode": spec.mode,
                    "kind": spec.kind,
                    "seed": spec.seed,
                    "trials": [k for k in sweep.trials if k in self.state.records],
                    "best": sweep.best,
                    "best_value": sweep.best_value,
                }
            )
        body = {
            "status": status,
            "error": error,
            "duration_s": round(time.monotonic() - started, 6),
            "sweeps": sweeps,
        }
        return self.client.finish_ml_run(self.project, self.run_id, body)


def _trial(key: str) -> int:
    return int(key.rsplit(".", 1)[1])


def _last_line(client: Client, project: str, job_id: int) -> str:
    """The last non-empty line of a job's log (its error, as a rule)."""
    try:
        data = b"".join(client.job_logs(project, job_id))
    except Exception:  # a log that cannot be read leaves the error without its line
        return ""
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("──")]
    return lines[-1][:500] if lines else ""


def run_step_job(client: Client, project: str, file: Path, run_id: int, key: str) -> int:
    """What a step's job does: run call ``key`` of run ``run_id`` and record its outputs.

    A failure prints its traceback (the job's log) and exits 1; the scheduler retries the
    job, and the driver records the step as failed once no retry is left."""
    from underlay.ml.pipelines.loader import load

    started = time.monotonic()
    try:
        run = client.read_ml_run(project, run_id)
        record = next((s for s in run.steps if s.key == key), None)
        if record is None:
            raise InvalidInput(f"run {run_id} has no step {key!r}")
        graph = load(file, run.pipeline).graph(run.params)
        call = graph.calls.get(key.split(".", 1)[0])
        if call is None or call.step.name != record.step:
            raise InvalidInput(f"{file.name} has no call {key!r} of step {record.step}")
        if call.step.code_digest() != record.code_digest:
            raise InvalidInput(f"the code of step {record.step} changed since run {run_id} started")
        outputs, metrics = execute.run_call(client, project, record, call.step, run.signing_key)
        job_id = int(os.environ.get("UNDERLAY_JOB_ID", "0") or 0)
        attempts = client.read_job(project, job_id).attempts if job_id else 1
        execute.finish_success(client, project, run_id, record, outputs, metrics, attempts, started)
    except Exception as error:  # user code: a failed attempt, its traceback in the job's log
        traceback.print_exc(file=sys.stderr)
        print(f"step {key} failed: {execute.describe(error)}", file=sys.stderr, flush=True)
        return 1
    print(f"step {key} succeeded", flush=True)
    return 0

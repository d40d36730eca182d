"""The training-script SDK: ``with underlay.start_run(project="p", experiment="churn") as run``.

Design decisions:

* **Logging returns at once.** :meth:`ActiveRun.log` checks its arguments against the rules
  of :mod:`underlay.ml.rules` (so a NaN or a step going backwards raises in the training loop,
  where it was made) and appends the points to a buffer. A background thread sends the buffer
  in batches (at most :attr:`ActiveRun.batch_points` points, at least every
  ``flush_interval_s``), over its own keep-alive connection, one batch at a time.
* **Bounded, then blocking; never dropping.** The buffer holds at most ``max_buffer`` points;
  a :meth:`~ActiveRun.log` that would overflow it waits until the sender has made room. While
  the server cannot be reached (restarting, say) the sender retries the same batch with
  backoff, so the training loop runs on until the buffer is full, then waits.
* **Exactly once.** Each batch carries a random id that the server records in the transaction
  that writes it; a batch whose answer was lost is sent again under the same id, and the
  server answers that it has it, writing nothing.
* **Flushed on exit.** Leaving the ``with`` block sends everything buffered, then ends the run
  ``finished`` (``failed`` when the block raised). A batch the server refuses (4xx) stops the
  sender; the error is raised from the next call and on exit, never swallowed.
* Inside a job (``UNDERLAY_JOB_ID`` in the environment) the run is linked to the job.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from underlay.client.client import Client
from underlay.errors import (
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
    UnderlayError,
)
from underlay.ml.rules import (
    KEY_RE,
    MAX_METRIC_KEYS,
    MAX_STEP,
    check_key,
    check_step,
    check_text_value,
    check_value,
)
from underlay.ml.schemas import ArtifactRead, RunRead

if TYPE_CHECKING:
    from underlay.ml.flavors import ModelInfo

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = (Unavailable, RateLimited)


class ActiveRun:
    """A run being logged to; made by :func:`start_run`. ``id`` is the run's id."""

    batch_points = 20_000  # ~1 MB of JSON; halved if the server finds a batch too large

    def __init__(
        self,
        client: Client,
        project: str,
        run: RunRead,
        *,
        owns_client: bool = False,
        max_buffer: int = 1_000_000,
        flush_interval_s: float = 0.5,
        retry_max_s: float = 2.0,
        flush_timeout_s: float = 600.0,
    ) -> None:
        self.client = client
        self.project = project
        self.id = run.id
        self.info = run
        self._owns_client = owns_client
        url, token, verify, timeout_s, _ = client._connect
        # the sender retries on its own, without a budget (below): its client does not
        self._sender_client = Client(
            url, token, verify=verify, timeout_s=timeout_s, retry_budget_s=0
        )
        self._max_buffer = max(max_buffer, 1)
        self._flush_interval_s = flush_interval_s
        self._retry_max_s = retry_max_s
        self._flush_timeout_s = flush_timeout_s
        # the buffer, in the order logged: rows of points (key, step, value, timestamp ms)
        # from log(), whole columns from log_batch(); and params/tags to send
        self._queue: deque[_Rows | _Column] = deque()
        self._queued = 0  # points in the queue
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the sender waits for work here
        self._room = threading.Condition(self._lock)  # log() waits for room here
        self._sending = 0  # points taken by the sender and not yet acknowledged
        self._closing = False
        self._error: UnderlayError | None = None
        # what this client has logged: the rules are checked here before the server
        self._last_step: dict[str, int] = {}
        self._keys: set[str] = set(run.metrics)
        self._last_step.update({k: p.step for k, p in run.metrics.items()})
        self._logged_params: dict[str, str] = dict(run.params)
        self.points_sent = 0
        self.batches_sent = 0
        self.retries = 0
        self._sampler: threading.Thread | None = None
        self._sampler_stop = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name=f"underlay-run-{run.id}")
        self._sender.daemon = True
        self._sender.start()

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("finished")
            return
        status = "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        try:
            self.end(status, error=f"{exc_type.__name__}: {exc}"[:2000])
        except UnderlayError:
            log.exception("could not end run %s as %s", self.id, status)

    # -- logging -----------------------------------------------------------------------

    def log(self, step: int | None = None, **metrics: float) -> None:
        """Log one point of each metric at ``step`` (default: one past the key's last step).
        Returns at once; raises at once for a value the rules refuse."""
        self.log_metrics(metrics, step=step)

    def log_metrics(self, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        if self._error is not None:
            self._raise_sender_error()
        now = int(time.time() * 1000)
        points = []
        last_step = self._last_step
        for key, value in metrics.items():
            if key not in self._keys:
                self._new_key(key)
            if type(value) is not float or value - value != 0.0:
                value = check_value(key, value)
            previous = last_step.get(key)
            if step is None:
                at = 0 if previous is None else previous + 1
            else:
                at = step
                if (previous is not None and at <= previous) or type(at) is not int:
                    check_step(key, at, previous)
            points.append((key, at, value, now))
        for key, at, _, _ in points:
            last_step[key] = at
        self._append(points)

    def log_batch(
        self,
        key: str,
        values: Iterable[float],
        steps: Iterable[int] | None = None,
    ) -> None:
        """Log many points of one key at once (steps default to the next ones in order).
        The column is checked as a whole and kept as it is until sent."""
        if self._error is not None:
            self._raise_sender_error()
        if key not in self._keys:
            self._new_key(key)
        now = int(time.time() * 1000)
        previous = self._last_step.get(key)
        value_list = list(values)
        n = len(value_list)
        if steps is None:
            start = 0 if previous is None else previous + 1
            step_list = list(range(start, start + n))
            if n and step_list[-1] > MAX_STEP:
                check_step(key, step_list[-1], None)  # raises
        else:
            step_list = list(steps)
            if len(step_list) != n:
                raise InvalidInput("log_batch: steps and values differ in length")
            if n:
                _check_steps(key, step_list, previous)
        if not _finite_floats(value_list):
            value_list = [
                v if type(v) is float and v - v == 0.0 else check_value(key, v) for v in value_list
            ]
        if not n:
            return
        self._last_step[key] = step_list[-1]
        self._append(_Column(key, step_list, value_list, now))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Set params (once each: another value for a param already set raises Conflict)."""
        checked = {}
        for key, value in params.items():
            check_key(key, "param")
            text = check_text_value(key, value)
            old = self._logged_params.get(key)
            if old is not None and old != text:
                raise Conflict(
                    f"param {key!r} of run {self.id} is {old!r:.200}; it cannot change to "
                    f"{text!r:.200} (params are set once)",
                    key=key,
                    old_value=old,
                    new_value=text,
                )
            checked[key] = text
        self._logged_params.update(checked)
        with self._lock:
            self._params.update(checked)
            self._wake.notify()

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        checked = {check_key(k, "tag"): check_text_value(k, v, "tag") for k, v in tags.items()}
        with self._lock:
            self._tags.update(checked)
            self._wake.notify()

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def log_artifact(
        self, local_path: str | Path, artifact_path: str | None = None
    ) -> ArtifactRead:
        """Upload a file as an artifact of the run (at ``artifact_path``, default its name)."""
        return self.client.log_artifact(self.project, self.id, local_path, artifact_path)

    def log_artifacts(
        self, local_dir: str | Path, artifact_path: str | None = None
    ) -> list[ArtifactRead]:
        """Upload every file under ``local_dir``, at its relative path under ``artifact_path``."""
        root = Path(local_dir)
        if not root.is_dir():
            raise InvalidInput(f"{str(root)[:200]!r} is not a folder")
        found = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            target = f"{artifact_path.strip('/')}/{relative}" if artifact_path else relative
            found.append(self.log_artifact(path, target))
        return found

    def log_input(self, kind: str, name: str, version: int) -> None:
        """Record a dataset or table version this run read (a lineage edge into the run)."""
        self.client.add_run_inputs(
            self.project, self.id, [{"kind": kind, "name": name, "version": version}]
        )

    def log_model(
        self,
        model: Any,
        artifact_path: str = "model",
        *,
        input_example: Any = None,
        flavor: str | None = None,
        **options: Any,
    ) -> ModelInfo:
        """Log ``model`` under ``artifact_path``: its flavor's files (inferred flavor unless
        named) and ``underlay-model.json`` with the signature inferred from
        ``input_example``; register it with ``underlay models register``. ``options`` go
        to the flavor (PyTorch: ``init_kwargs``)."""
        from underlay.client.models import log_model

        return log_model(
            self.client,
            self.project,
            self.id,
            model,
            artifact_path,
            input_example=input_example,
            flavor=flavor,
            **options,
        )

    # -- flushing and ending -----------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything logged so far is stored (raises what the server refused, or
        Unavailable when the server stayed unreachable for ``timeout_s``)."""
        deadline = time.monotonic() + (self._flush_timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            self._wake.notify()
            while (self._queued or self._params or self._tags or self._sending) and (
                self._error is None
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    pending = self._queued + self._sending
                    raise Unavailable(
                        f"run {self.id}: {pending} point(s) still unsent after "
                        f"{timeout_s or self._flush_timeout_s:.0f} s; the server is unreachable"
                    )
                self._room.wait(min(left, 0.5))
                self._wake.notify()
        if self._error is not None:
            self._raise_sender_error()

    def end(self, status: str = "finished", error: str = "") -> RunRead:
        """Flush, stop the background threads, and end the run with ``status``."""
        self._stop_sampler()
        try:
            self.flush()
        finally:
            with self._lock:
                self._closing = True
                self._wake.notify_all()
            self._sender.join(10)
        deadline = time.monotonic() + self._flush_timeout_s
        while True:
            try:
                self.info = self._sender_client.end_run(self.project, self.id, status, error)
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._sender_client.close()
        if self._owns_client:
            self.client.close()
        return self.info

    # -- internals ---------------------------------------------------------------------

    def _new_key(self, key: str) -> None:
        if KEY_RE.fullmatch(key) is None:
            check_key(key)
        if len(self._keys) >= MAX_METRIC_KEYS:
            raise InvalidInput(
                f"a run holds at most {MAX_METRIC_KEYS} distinct metric keys: {key!r} would "
                "be one more (log fewer keys, or put the detail in an artifact)",
                limit=MAX_METRIC_KEYS,
            )
        self._keys.add(key)

    def _append(self, points: _Rows | _Column) -> None:
        n = len(points)
        with self._lock:
            while self._queued + self._sending + n > self._max_buffer and (
                self._queued or self._sending
            ):
                if self._error is not None:
                    break
                self._wake.notify()
                self._room.wait(0.5)
            last = self._queue[-1] if self._queue else None
            if isinstance(points, list) and isinstance(last, list):
                last.extend(points)
            else:
                self._queue.append(points)
            self._queued += n
            if self._queued >= self.batch_points:
                self._wake.notify()
        if self._error is not None:
            self._raise_sender_error()

    def _raise_sender_error(self) -> None:
        assert self._error is not None
        raise type(self._error)(
            f"run {self.id}: the server refused logged data: {self._error}", **self._error.extra
        )

    def _take(self) -> dict[str, Any] | None:
        """The next batch to send (under the lock), or None when there is nothing."""
        if not (self._queued or self._params or self._tags):
            return None
        keys: dict[str, int] = {}
        key_col: list[int] = []
        step_col: list[int] = []
        value_col: list[float] = []
        stamp_col: list[int] = []
        room = self.batch_points
        while self._queue and room:
            segment = self._queue[0]
            if isinstance(segment, list):
                rows = segment[:room]
                if len(rows) == len(segment):
                    self._queue.popleft()
                else:
                    del segment[:room]
                key_col.extend(keys.setdefault(k, len(keys)) for k, _, _, _ in rows)
                step_col.extend(r[1] for r in rows)
                value_col.extend(r[2] for r in rows)
                stamp_col.extend(r[3] for r in rows)
                room -= len(rows)
                continue
            a = segment.offset
            b = min(a + room, len(segment.steps))
            key_col.extend(repeat(keys.setdefault(segment.key, len(keys)), b - a))
            step_col.extend(segment.steps[a:b])
            value_col.extend(segment.values[a:b])
            stamp_col.extend(repeat(segment.timestamp, b - a))
            segment.offset = b
            if b == len(segment.steps):
                self._queue.popleft()
            room -= b - a
        taken = self.batch_points - room
        self._queued -= taken
        self._sending = taken
        body = {
            "batch_id": secrets.token_hex(16),
            "params": self._params,
            "tags": self._tags,
            "metrics": {
                "keys": list(keys),
                "key": key_col,
                "step": step_col,
                "value": value_col,
                "timestamp": stamp_col,
            },
        }
        self._params, self._tags = {}, {}
        return body

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not (self._closing or self._queued >= self.batch_points):
                    self._wake.wait(self._flush_interval_s)
                    if self._queued or self._params or self._tags:
                        break
                if self._error is not None:
                    return
                body = self._take()
                if body is None:
                    self._room.notify_all()
                    if self._closing:
                        return
                    continue
            ok = self._send(body)
            with self._lock:
                self._sending = 0
                self._room.notify_all()
                if not ok:
                    return

    def _send(self, body: dict[str, Any]) -> bool:
        """Send one batch until the server has it; False when it refused it (kept as the
        error to raise)."""
        delay = 0.05
        while True:
            try:
                self._sender_client.log_batch(self.project, self.id, body)
                self.points_sent += len(body["metrics"]["key"])
                self.batches_sent += 1
                return True
            except _RETRYABLE_STATUS:
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
            except PayloadTooLarge as exc:
                # refused before anything was written: sent again as two halves under new
                # ids, and the batches after it are that much smaller
                halves = _split(body)
                if halves is None:
                    self._error = exc
                    return False
                self.batch_points = max(1, len(body["metrics"]["key"]) // 2)
                return self._send(halves[0]) and self._send(halves[1])
            except UnderlayError as exc:
                self._error = exc
                return False

    def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler_stop.set()
            self._sampler.join(10)
            self._sampler = None


_Rows = list[tuple[str, int, float, int]]


@dataclass(eq=False)
class _Column:
    """Points of one key logged at once by :meth:`ActiveRun.log_batch`; ``offset`` of them
    are sent already."""

    key: str
    steps: list[int]
    values: list[float]
    timestamp: int
    offset: int = 0

    def __len__(self) -> int:
        return len(self.steps) - self.offset


def _check_steps(key: str, steps: list[int], previous: int | None) -> None:
    """Steps of one key: integers 0..2**62, each above the one before (``previous`` first):
    checked as a whole; point by point only to raise about the first that is not."""
    if (
        set(map(type, steps)) <= {int}
        and steps[0] >= 0
        and steps[-1] <= MAX_STEP
        and (previous is None or steps[0] > previous)
        and all(map(operator.lt, steps, steps[1:]))
    ):
        return
    for at in steps:
        check_step(key, at, previous)
        previous = at


def _finite_floats(values: list[Any]) -> bool:
    """True when every value is a float and finite (the sum of finite floats is finite
    unless it overflows, which only sends a column down the point-by-point path)."""
    return set(map(type, values)) <= {float} and math.isfinite(sum(values))


def _split(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A batch as two, each with half its points and a new id (the params and tags go with
    the first); None for a batch of fewer than two points."""
    cols = body["metrics"]
    half = len(cols["key"]) // 2
    if half == 0:
        return None
    parts = [
        {name: cols[name][:half] for name in ("key", "step", "value", "timestamp")},
        {name: cols[name][half:] for name in ("key", "step", "value", "timestamp")},
    ]
    first, second = ({**body, "batch_id": secrets.token_hex(16)} for _ in range(2))
    first["metrics"] = {"keys": cols["keys"], **parts[0]}
    second["metrics"] = {"keys": cols["keys"], **parts[1]}
    second["params"], second["tags"] = {}, {}
    return first, second


def _job_id() -> int | None:
    value = os.environ.get("UNDERLAY_JOB_ID", "")
    return int(value) if value.isdigit() else None


def git_commit(path: str | Path = ".") -> str | None:
    """The commit checked out at ``path`` (None outside a git work tree)."""
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        commit = done.stdout.strip()
        if done.returncode == 0 and len(commit) in (40, 64):
            return commit
    return None


def frozen_environment() -> str:
    """The installed distributions as ``pip freeze`` prints them (``name==version``, sorted
    case-insensitively), read from the interpreter's metadata without starting pip."""
    import importlib.metadata

    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(seen[k] for k in sorted(seen)) + "\n"


def start_run(
    project: str | None = None,
    experiment: str = "default",
    *,
    name: str = "",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    inputs: Iterable[Mapping[str, Any]] | None = None,
    client: Client | None = None,
    job_id: int | None = None,
    system_metrics: bool = False,
    system_metrics_interval_s: float = 10.0,
    record_environment: bool = True,
    **options: Any,
) -> ActiveRun:
    """Start a run and return it; use it as a context manager so it is flushed and ended.

    ``project`` defaults to the client's profile project. Inside a job the run is linked to
    the job (``UNDERLAY_JOB_ID``). ``inputs``: dataset/table versions the run reads,
    ``[{"kind": "table", "name": "sales", "version": 3}]``. ``options`` go to
    :class:`ActiveRun` (``max_buffer``, ``flush_interval_s``, ``flush_timeout_s``)."""
    owns = client is None
    active_client = client or Client.from_env()
    project = project or active_client.project
    if not project:
        raise InvalidInput("start_run needs a project (or a profile with a default project)")
    body_params = {}
    for key, value in (params or {}).items():
        body_params[check_key(key, "param")] = check_text_value(key, value)
    body_tags = {
        check_key(k, "tag"): check_text_value(k, v, "tag") for k, v in (tags or {}).items()
    }
    try:
        info = active_client.create_run(
            project,
            experiment,
            name=name,
            job_id=job_id if job_id is not None else _job_id(),
            git_commit=git_commit() if record_environment else None,
            environment=frozen_environment() if record_environment else "",
            params=body_params,
            tags=body_tags,
            inputs=[dict(i) for i in inputs or []],
        )
    except BaseException:
        if owns:
            active_client.close()
        raise
    run = ActiveRun(active_client, project, info, owns_client=owns, **options)
    if system_metrics:
        from underlay.client.sysmetrics import start_sampler

        run._sampler = start_sampler(run, system_metrics_interval_s, run._sampler_stop)
    return run

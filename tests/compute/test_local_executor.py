"""The local executor on real processes: exit states, logs and secrets, devices, affinity,
memory and run-time limits, stopping whole trees, adoption after a restart, usage."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from underlay.compute.executors.base import ExitStatus, LaunchSpec, ProcessRef, Worker
from underlay.compute.executors.local import LOST_REASON, LocalExecutor, job_environment
from underlay.errors import Conflict, InvalidInput

WAIT_S = 30.0  # generous bound on every waiting loop; never an assertion on speed
_ids = itertools.count(1)


class Harness:
    """Builds specs and executors, and stops and reaps whatever a test left running."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.executors: list[LocalExecutor] = []
        self.refs: list[ProcessRef] = []

    def executor(self, **options: Any) -> LocalExecutor:
        executor = LocalExecutor(self.run_dir, grace_s=options.pop("grace_s", 0.5), **options)
        self.executors.append(executor)
        return executor

    def spec(self, code: str, **fields: Any) -> LaunchSpec:
        job_id = next(_ids)
        return LaunchSpec(
            job_id=job_id,
            attempt=1,
            command=(sys.executable, "-c", code),
            workdir=self.root / "work" / str(job_id),
            log_path=self.root / "logs" / f"{job_id}.log",
            **fields,
        )

    def launch(self, executor: LocalExecutor, spec: LaunchSpec) -> ProcessRef:
        ref = executor.launch(spec)
        self.refs.append(ref)
        return ref

    def cleanup(self) -> None:
        for executor in self.executors:
            for ref in self.refs:
                executor.stop(ref, state="cancelled", reason="test ended", grace_s=0)
                wait(executor, ref)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.cleanup()


def wait(executor: LocalExecutor, ref: ProcessRef) -> ExitStatus:
    deadline = time.monotonic() + WAIT_S
    while (status := executor.poll(ref)) is None:
        assert time.monotonic() < deadline, f"job {ref.job_id} still runs after {WAIT_S} s"
        time.sleep(0.02)
    return status


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def log_text(spec: LaunchSpec) -> str:
    return spec.log_path.read_text() if spec.log_path.exists() else ""


def wait_for_log(spec: LaunchSpec, text: str) -> str:
    wait_for(lambda: text in log_text(spec), f"{text!r} in the log")
    return log_text(spec)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pid_from_log(spec: LaunchSpec, label: str) -> int:
    log = wait_for_log(spec, f"\n{label} ")  # a line of its own, not the header's command
    line = next(x for x in log.splitlines() if x.startswith(f"{label} "))
    return int(line.split()[1])


# Children that wait for the test instead of sleeping for a guessed time.
WAIT_FOR_GO = "import os, time\nwhile not os.path.exists('go'): time.sleep(0.01)\n"
TRAPS_TERM = (
    "import signal, sys, time\n"
    "def bye(*_):\n    print('got SIGTERM', flush=True)\n    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n"
)
IGNORES_TERM = (
    "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('child', os.getpid(), flush=True)\nprint('ready', flush=True)\ntime.sleep(60)\n"
)
SPAWNS_GRANDCHILD = (
    "import os, subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('grandchild', g.pid, flush=True)\nprint('child', os.getpid(), flush=True)\n"
)


# -- ends --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state", "exit_code", "reason"),
    [
        ("print('hi')", "succeeded", 0, "exited with code 0"),
        ("raise SystemExit(3)", "failed", 3, "exited with code 3"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
            "failed",
            None,
            "killed by SIGSEGV",
        ),
    ],
)
def test_end_state_follows_exit(
    harness: Harness, code: str, state: str, exit_code: int | None, reason: str
) -> None:
    executor = harness.executor()
    status = wait(executor, harness.launch(executor, harness.spec(code)))
    assert (status.state, status.exit_code, status.reason) == (state, exit_code, reason)
    assert status.usage.wall_s > 0


def test_a_command_that_cannot_start_fails_with_the_reason(harness: Harness) -> None:
    executor = harness.executor()
    spec = replace(harness.spec(""), command=("no-such-program-underlay", "--flag"))
    status = wait(executor, harness.launch(executor, spec))
    assert status.state == "failed"
    assert status.exit_code == 127
    assert status.reason == "cannot run no-such-program-underlay: No such file or directory"
    assert "cannot run no-such-program-underlay" in log_text(spec)


def test_a_gang_is_refused_saying_which_executor_runs_one(harness: Harness) -> None:
    spec = replace(harness.spec("pass"), workers=(Worker("a"), Worker("b")))
    with pytest.raises(InvalidInput, match="a gang of 2 workers needs an executor that supports"):
        harness.executor().launch(spec)
    assert not (harness.run_dir / f"{spec.job_id}.1").exists()


def test_workdir_is_created_and_used(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec("import os; open('here.txt', 'w').write(os.getcwd())")
    assert not spec.workdir.exists()
    assert wait(executor, harness.launch(executor, spec)).state == "succeeded"
    assert (spec.workdir / "here.txt").read_text() == str(spec.workdir)


# -- logs, environment, secrets ----------------------------------------------------------------


def test_logs_capture_both_streams_and_secrets_reach_only_the_child(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-value-4c1e"
    monkeypatch.setenv("UNDERLAY_AGENT_ONLY", "agent-credential")
    code = (
        "import json, os, sys\n"
        "print('to stdout', flush=True)\nprint('to stderr', file=sys.stderr, flush=True)\n"
        "keys = ('API_KEY', 'PLAIN', 'UNDERLAY_AGENT_ONLY')\n"
        "json.dump({k: os.environ.get(k) for k in keys}, open('env.json', 'w'))\n" + WAIT_FOR_GO
    )
    executor = harness.executor()
    spec = harness.spec(code, env={"PLAIN": "visible"}, secrets={"API_KEY": secret})
    ref = harness.launch(executor, spec)
    env_file = spec.workdir / "env.json"
    wait_for(lambda: env_file.exists() and env_file.stat().st_size > 0, "the child's env")
    shim_argv = " ".join(psutil.Process(ref.pid).cmdline())
    child = psutil.Process(ref.pid).children()[0]
    child_argv = " ".join(child.cmdline())
    (spec.workdir / "go").touch()
    assert wait(executor, ref).state == "succeeded"

    seen = json.loads(env_file.read_text())
    assert seen == {"API_KEY": secret, "PLAIN": "visible", "UNDERLAY_AGENT_ONLY": None}
    log = log_text(spec)
    assert log.startswith(f"[underlay] job {spec.job_id} attempt 1 starting at ")
    assert "to stdout" in log
    assert "to stderr" in log
    for text in (
        log,
        shim_argv,
        child_argv,
        *(p.read_text() for p in ref.status_path.parent.iterdir()),
    ):
        assert secret not in text


def test_device_environment_for_gpus_fractions_and_none(harness: Harness) -> None:
    spec = harness.spec("pass", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert job_environment(spec, {})["CUDA_VISIBLE_DEVICES"] == ""  # a job cannot grab GPUs
    by_index = job_environment(replace(spec, gpu_indexes=(1, 3)), {})
    assert by_index["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert by_index["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    both = replace(spec, gpu_indexes=(0,), gpu_uuids=("GPU-aa", "GPU-bb"))
    assert job_environment(both, {})["CUDA_VISIBLE_DEVICES"] == "GPU-aa,GPU-bb"
    shared = job_environment(replace(spec, gpu_indexes=(2,), gpu_fraction=0.25), {})
    assert shared["UNDERLAY_GPU_FRACTION"] == "0.25"
    assert shared["XLA_CLIENT_MEM_FRACTION"] == shared["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.25"
    assert shared["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    whole = job_environment(replace(spec, gpu_indexes=(2,), gpu_fraction=1.0), {})
    assert "UNDERLAY_GPU_FRACTION" not in whole
    inherited = job_environment(spec, {"PATH": "/bin", "LC_ALL": "C", "DATABASE_URL": "pg://x"})
    assert inherited["PATH"] == "/bin"
    assert inherited["LC_ALL"] == "C"
    assert "DATABASE_URL" not in inherited


@pytest.mark.parametrize(
    ("gpus", "expected"), [({}, ""), ({"gpu_uuids": ("GPU-1234",)}, "GPU-1234")]
)
def test_cuda_visible_devices_reaches_the_child(
    harness: Harness, gpus: dict[str, Any], expected: str
) -> None:
    executor = harness.executor()
    code = "import os; print('CVD=' + repr(os.environ['CUDA_VISIBLE_DEVICES']))"
    spec = harness.spec(code, **gpus)
    assert wait(executor, harness.launch(executor, spec)).state == "succeeded"
    assert f"CVD={expected!r}" in log_text(spec)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_cpu_affinity_is_applied(harness: Harness) -> None:
    cpu = max(os.sched_getaffinity(0))
    executor = harness.executor()
    spec = harness.spec("import os; print('cpus', sorted(os.sched_getaffinity(0)))", cpus=(cpu,))
    assert wait(executor, harness.launch(executor, spec)).state == "succeeded"
    assert f"cpus [{cpu}]" in log_text(spec)


# -- limits ------------------------------------------------------------------------------------


def test_memory_limit_kills_the_job_with_the_reason(harness: Harness) -> None:
    executor = harness.executor()
    code = "import time\nx = b'x' * (300 << 20)\ntime.sleep(60)\n"
    status = wait(executor, harness.launch(executor, harness.spec(code, memory_mib=64)))
    assert status.state == "failed"
    assert status.exit_code is None
    assert status.reason.startswith("killed for memory: used ")
    assert status.reason.endswith(" MiB, limit 64 MiB")
    assert int(status.reason.split()[4]) >= 64  # "used N MiB"


def test_cgroup_v2_limit_when_available(harness: Harness) -> None:
    executor = harness.executor()
    if executor.cgroup_parent is None:
        pytest.skip("no writable cgroup v2 hierarchy at /sys/fs/cgroup on this machine")
    spec = harness.spec("print('cg', open('/proc/self/cgroup').read().strip())", memory_mib=96)
    ref = harness.launch(executor, spec)
    assert wait(executor, ref).state == "succeeded"
    leaf = executor.cgroup_parent / f"job-{spec.job_id}-1"
    assert f"/{leaf.relative_to(Path('/sys/fs/cgroup'))}" in log_text(spec)
    assert not leaf.exists()  # removed once the attempt ended


def test_max_run_time_ends_the_job_as_failed(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec("import time; time.sleep(60)", max_runtime_s=0.5)
    status = wait(executor, harness.launch(executor, spec))
    assert status.state == "failed"
    assert status.reason == "exceeded its max run time of 0.5 s"


# -- stopping ------------------------------------------------------------------------------------


def test_stop_sends_sigterm_first_and_reports_the_requested_state(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec(TRAPS_TERM)
    ref = harness.launch(executor, spec)
    wait_for_log(spec, "\nready")
    executor.stop(ref, state="preempted", reason="project A reclaimed its quota", grace_s=30)
    status = wait(executor, ref)
    assert (status.state, status.reason) == ("preempted", "project A reclaimed its quota")
    assert status.exit_code == 0  # it exited by itself: no SIGKILL was needed
    assert "got SIGTERM" in log_text(spec)


def test_stop_kills_a_job_that_ignores_sigterm_after_the_grace(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec(IGNORES_TERM)
    ref = harness.launch(executor, spec)
    child = pid_from_log(spec, "child")
    wait_for_log(spec, "\nready")
    executor.stop(ref, state="cancelled", reason="cancelled by alice", grace_s=60)
    assert executor.poll(ref) is None  # stop returns at once; the grace runs
    assert not gone(child)  # SIGTERM ignored, the grace not over: it still runs
    # a second stop with a shorter grace (here none) brings the SIGKILL forward
    executor.stop(ref, state="failed", reason="ignored", grace_s=0)
    status = wait(executor, ref)
    assert (status.state, status.reason, status.exit_code) == (
        "cancelled",
        "cancelled by alice",
        None,
    )
    assert gone(child)


def test_stop_ends_the_whole_tree(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec(SPAWNS_GRANDCHILD + "time.sleep(60)\n")
    ref = harness.launch(executor, spec)
    grandchild = pid_from_log(spec, "grandchild")
    child = pid_from_log(spec, "child")
    executor.stop(ref, state="cancelled", reason="cancelled", grace_s=5)
    assert wait(executor, ref).state == "cancelled"
    wait_for(lambda: gone(grandchild) and gone(child), "the tree to die")


def test_a_job_that_ends_leaves_no_process_behind(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec(SPAWNS_GRANDCHILD)  # exits at once, its grandchild still sleeping
    status = wait(executor, harness.launch(executor, spec))
    assert status.state == "succeeded"
    grandchild = pid_from_log(spec, "grandchild")
    wait_for(lambda: gone(grandchild), "the leftover grandchild to be killed")


def test_stop_right_after_launch_still_reports_the_requested_state(harness: Harness) -> None:
    executor = harness.executor()
    ref = harness.launch(executor, harness.spec("import time; time.sleep(60)"))
    executor.stop(ref, state="cancelled", reason="changed my mind", grace_s=0.5)
    status = wait(executor, ref)
    assert (status.state, status.reason) == ("cancelled", "changed my mind")


def test_stop_after_the_end_keeps_the_real_end(harness: Harness) -> None:
    executor = harness.executor()
    ref = harness.launch(executor, harness.spec("raise SystemExit(5)"))
    wait_for(lambda: ref.status_path.exists(), "the job to end")
    executor.stop(ref, state="cancelled", reason="too late", grace_s=0)
    assert wait(executor, ref).reason == "exited with code 5"


def test_a_vanished_shim_is_lost_and_takes_its_job_with_it(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec("import os, time; print('child', os.getpid(), flush=True); time.sleep(60)")
    ref = harness.launch(executor, spec)
    child = pid_from_log(spec, "child")
    os.kill(ref.pid, signal.SIGKILL)
    status = wait(executor, ref)
    assert (status.state, status.reason) == ("lost", LOST_REASON)
    wait_for(lambda: gone(child), "the orphaned job to die")  # lost must not run twice


# -- adoption ------------------------------------------------------------------------------------


def test_a_new_executor_adopts_a_running_attempt(harness: Harness) -> None:
    first = harness.executor()
    spec = harness.spec(WAIT_FOR_GO + "raise SystemExit(4)\n")
    ref = harness.launch(first, spec)
    second = harness.executor()  # the agent restarted
    assert second.adopt(ref)
    assert second.poll(ref) is None
    (spec.workdir / "go").touch()
    status = wait(second, ref)
    assert (status.state, status.exit_code, status.reason) == ("failed", 4, "exited with code 4")


def test_an_executor_dropped_while_its_job_runs_leaves_no_unreaped_child_behind(
    harness: Harness,
) -> None:
    """The server that started a shim may go (the shim runs on, to be adopted): collecting
    the old executor must not warn that a subprocess is still running (the suite turns that
    warning into an error in whichever test happens to collect it)."""
    import gc
    import warnings

    spec = harness.spec(WAIT_FOR_GO + "raise SystemExit(0)\n")
    first = LocalExecutor(harness.run_dir, grace_s=0.5)  # not kept by the harness
    ref = first.launch(spec)
    del first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
    second = harness.executor()  # a new agent adopts it and sees it end
    harness.refs.append(ref)
    assert second.adopt(ref)
    (spec.workdir / "go").touch()
    assert wait(second, ref).state == "succeeded"


def test_an_adopted_attempt_keeps_its_stop_request_and_limits(harness: Harness) -> None:
    first = harness.executor()
    stopping = harness.spec(IGNORES_TERM)
    stopped = harness.launch(first, stopping)
    limited = harness.launch(first, harness.spec("import time; time.sleep(60)", max_runtime_s=0.3))
    wait_for_log(stopping, "\nready")
    first.stop(stopped, state="preempted", reason="borrowed quota reclaimed", grace_s=0.3)
    second = harness.executor()
    assert second.adopt(stopped)
    assert second.adopt(limited)
    status = wait(second, stopped)  # the SIGKILL deadline is enforced by the new executor
    assert (status.state, status.reason) == ("preempted", "borrowed quota reclaimed")
    assert wait(second, limited).reason == "exceeded its max run time of 0.3 s"


def test_adopt_refuses_dead_and_reused_pids(harness: Harness) -> None:
    first = harness.executor()
    ended = harness.launch(first, harness.spec("pass"))
    running = harness.launch(first, harness.spec(WAIT_FOR_GO))
    wait(first, ended)
    second = harness.executor()
    assert not second.adopt(ended)
    assert second.poll(ended) is not None  # it finished unwatched; its status file says how
    assert second.poll(ended).state == "succeeded"  # type: ignore[union-attr]
    reused = replace(running, started=running.started - 3600)  # same pid, another process
    assert not second.adopt(reused)
    assert second.adopt(running)


# -- usage -------------------------------------------------------------------------------------


def test_usage_reports_cpu_seconds_of_a_busy_tree(harness: Harness) -> None:
    executor = harness.executor()
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    spec = harness.spec(busy + WAIT_FOR_GO)
    ref = harness.launch(executor, spec)
    wait_for(lambda: executor.usage(ref).cpu_s >= 0.3, "CPU seconds to show")
    live = executor.usage(ref)
    assert live.rss_mib > 0
    assert live.wall_s > 0
    (spec.workdir / "go").touch()
    final = wait(executor, ref).usage
    assert final.cpu_s >= live.cpu_s
    assert executor.usage(ref) == final


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": ()}, "the job has no command"),
        ({"memory_mib": 0}, "memory_mib must be positive"),
        ({"max_runtime_s": 0}, "max_runtime_s must be positive"),
        ({"gpu_fraction": 1.5, "gpu_indexes": (0,)}, r"gpu_fraction must be in \(0, 1\]"),
        ({"gpu_fraction": 0.5}, "a gpu_fraction needs a GPU"),
        ({"cpus": (100_000,)}, r"CPUs \[100000\] are not available here"),
        ({"env": {"A=B": "x"}}, "env variable 'A=B' has an invalid name"),
        ({"secrets": {"TOKEN": "a\0b"}}, "secret variable 'TOKEN' has an invalid name or value"),
    ],
)
def test_launch_rejects_bad_specs(harness: Harness, fields: dict[str, Any], message: str) -> None:
    executor = harness.executor()
    with pytest.raises(InvalidInput, match=message):
        executor.launch(replace(harness.spec("pass"), **fields))


def test_launching_the_same_attempt_twice_is_a_conflict(harness: Harness) -> None:
    executor = harness.executor()
    spec = harness.spec("pass")
    wait(executor, harness.launch(executor, spec))
    with pytest.raises(Conflict, match=f"attempt 1 of job {spec.job_id} was launched already"):
        executor.launch(spec)


def test_stop_rejects_a_bad_state_or_grace(harness: Harness) -> None:
    executor = harness.executor()
    ref = harness.launch(executor, harness.spec("pass"))
    with pytest.raises(InvalidInput, match="cannot stop with state 'running'"):
        executor.stop(ref, state="running", reason="x", grace_s=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="grace_s must be a finite number"):
        executor.stop(ref, state="cancelled", reason="x", grace_s=-1)


def test_a_node_that_must_isolate_refuses_to_run_jobs_it_cannot(harness: Harness) -> None:
    from underlay.compute.executors.isolation import Isolation
    from underlay.errors import Unavailable

    bare = Isolation("none", required=True, reason="no root and no user namespaces")
    executor = harness.executor(isolation=bare)
    spec = harness.spec("print('never')")
    with pytest.raises(Unavailable, match=r"cannot isolate jobs.*no root and no user namespaces"):
        executor.launch(spec)
    assert not spec.log_path.exists()  # nothing started, nothing written

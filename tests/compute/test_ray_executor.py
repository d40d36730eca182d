"""The Ray executor on a real Ray cluster of this machine: a head and a worker node, each
standing for one of our nodes, every address on 127.0.0.1.

One cluster per module (starting Ray costs seconds). Jobs are real processes under the same
shim and sandbox as the local executor's; the gang runs a real ``torch.distributed`` (gloo,
CPU) all-reduce. One test drives the whole platform as a user starts it: `underlay up` with
UNDERLAY_EXECUTOR=ray and PostgreSQL, which starts a Ray cluster of its own.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import itertools
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from tests.cli.conftest import ServerProcess
from tests.conftest import ADMIN_TOKEN, _reset_pg
from underlay.client import Client
from underlay.compute.executors.base import ExitStatus, LaunchSpec, ProcessRef, Worker
from underlay.compute.executors.ray_cluster import HOST, LocalRayCluster
from underlay.compute.executors.ray_executor import RayExecutor
from underlay.config import ComputeSettings
from underlay.errors import InvalidInput, Unavailable

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'underlay[ray]')", allow_module_level=True)
pytestmark = [pytest.mark.ray, pytest.mark.slow]

WAIT_S = 60.0  # a bound on every wait, never an assertion on speed
HEAD, OTHER = "ray-head", "ray-worker"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    temp = Path(tempfile.mkdtemp(prefix="ulr-", dir="/tmp"))  # short: Ray socket paths
    local = LocalRayCluster(temp)
    try:
        local.start_head(HEAD)
        local.add_node(OTHER)
        yield local
    finally:
        pids = local.pids()
        local.stop()
        shutil.rmtree(temp, ignore_errors=True)
    left = [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)]
    assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray-executor")


@pytest.fixture(scope="module")
def executor(cluster: LocalRayCluster, root: Path) -> Iterator[RayExecutor]:
    home = root / "home"
    home.mkdir()
    (home / "master.key").write_text("secret")
    ex = RayExecutor(
        root / "run",
        node=HEAD,
        address=cluster.address,
        compute=ComputeSettings(grace_s=1.0),
        home=home,
        worker_dir=root / "workers",
        node_ip=HOST,
        auth_token_path=cluster.token_path,
    )
    yield ex
    ex.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def spec(root: Path, code: str, workers: tuple[Worker, ...] = (), **env: str) -> LaunchSpec:
    job_id = next(_ids)
    return LaunchSpec(
        job_id=job_id,
        attempt=1,
        command=(sys.executable, "-c", textwrap.dedent(code)),
        workdir=root / "work" / str(job_id),
        log_path=root / "logs" / f"{job_id}.log",
        env=dict(env),
        workers=workers,
    )


def wait(executor: RayExecutor, ref: ProcessRef) -> ExitStatus:
    deadline = time.monotonic() + WAIT_S
    while (status := executor.poll(ref)) is None:
        assert time.monotonic() < deadline, f"job {ref.job_id} still runs after {WAIT_S} s"
        time.sleep(0.1)
    return status


def test_a_job_runs_on_the_node_placed_with_its_log_and_usage(
    executor: RayExecutor, root: Path, cluster: LocalRayCluster
) -> None:
    code = """
        import os, time
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        env = os.environ
        print("hello from", env["UNDERLAY_NODE"], env["RANK"], env["WORLD_SIZE"])
        print("devices", env["CUDA_VISIBLE_DEVICES"])
        time.sleep(1.0)
    """
    s = spec(root, code, (Worker(OTHER, (1,), ("GPU-b-1",)),))
    ref = executor.launch(s)
    worker_node = psutil.Process(cluster.processes[1].pid)
    shim = psutil.Process(ref.pid)
    assert worker_node in shim.parents(), "the worker must run under the worker node's Ray"
    status = wait(executor, ref)
    assert (status.state, status.exit_code) == ("succeeded", 0), status
    log = s.log_path.read_text()
    assert f"[underlay] job {s.job_id} attempt 1 starting" in log
    assert f"hello from {OTHER} 0 1" in log
    assert "\ndevices GPU-b-1\n" in log  # the accelerator our placement gave this worker
    assert status.usage.cpu_s >= 0.2
    assert executor.usage(ref) == status.usage


def test_every_ray_address_is_loopback(
    executor: RayExecutor, root: Path, cluster: LocalRayCluster
) -> None:
    ref = executor.launch(spec(root, "print('up')", (Worker(HEAD),)))
    wait(executor, ref)
    bound = []
    for pid in cluster.pids() | {psutil.Process().pid}:
        try:
            sockets = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        bound += [(pid, c.laddr.ip, c.laddr.port) for c in sockets if c.laddr and not c.raddr]
    assert bound, "Ray's processes must have listening sockets to check"
    elsewhere = [b for b in bound if _ipv4(b[1]) != HOST]
    assert not elsewhere, f"Ray listens beyond 127.0.0.1: {elsewhere}"
    assert all(port not in (6379, 5432) for _, _, port in bound)
    me = psutil.Process().pid  # (the driver: this process, which other tests' servers share)
    in_suite_range = [b for b in bound if b[0] != me and 10_000 <= b[2] < 30_000]
    assert not in_suite_range, f"Ray took ports the test suite's servers use: {in_suite_range}"


def _ipv4(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return str(mapped or address)


def test_a_gang_all_reduces_with_torch_across_two_nodes(executor: RayExecutor, root: Path) -> None:
    pytest.importorskip("torch")
    code = """
        import os
        import torch
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method="env://")
        total = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(total)
        print(f"rank {dist.get_rank()} of {dist.get_world_size()} sum {total.item():g} "
              f"local {os.environ['LOCAL_RANK']}/{os.environ['LOCAL_WORLD_SIZE']} "
              f"master {os.environ['MASTER_ADDR']}")
        dist.destroy_process_group()
    """
    s = spec(root, code, (Worker(HEAD), Worker(OTHER)), GLOO_SOCKET_IFNAME="lo")
    status = wait(executor, executor.launch(replace(s, memory_mib=4096)))  # torch is large
    log = s.log_path.read_text()
    assert status.state == "succeeded", (status.reason, log)
    assert f"[worker 0] rank 0 of 2 sum 3 local 0/1 master {HOST}" in log
    assert f"[worker 1] rank 1 of 2 sum 3 local 0/1 master {HOST}" in log


def test_stop_sends_sigterm_to_every_worker_then_sigkill_after_the_grace(
    executor: RayExecutor, root: Path
) -> None:
    code = """
        import os, signal, time
        def term(signum, frame):
            print("worker", os.environ["RANK"], "got SIGTERM", flush=True)
        signal.signal(signal.SIGTERM, term)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """
    s = spec(root, code, (Worker(HEAD), Worker(OTHER)))
    ref = executor.launch(s)
    deadline = time.monotonic() + WAIT_S
    while s.log_path.read_text().count("] ready\n") < 2:  # not the header's "ready" in code
        assert executor.poll(ref) is None and time.monotonic() < deadline
        time.sleep(0.1)
    executor.stop(ref, state="preempted", reason="preempted for job 9", grace_s=1.0)
    status = wait(executor, ref)
    log = s.log_path.read_text()
    assert (status.state, status.reason) == ("preempted", "preempted for job 9"), log
    assert "[worker 0] worker 0 got SIGTERM" in log and "[worker 1] worker 1 got SIGTERM" in log
    assert status.exit_code is None  # it ignored SIGTERM: SIGKILL ended it


def test_a_failing_worker_stops_and_fails_the_whole_gang(executor: RayExecutor, root: Path) -> None:
    code = """
        import os, sys, time
        if os.environ["RANK"] == "1":
            sys.exit(3)
        time.sleep(120)
    """
    s = spec(root, code, (Worker(HEAD), Worker(OTHER)))
    status = wait(executor, executor.launch(s))
    assert status.state == "failed"
    assert status.reason == f"worker 1 (node {OTHER}) exited with code 3"


def test_a_restarted_agent_adopts_a_running_attempt(
    executor: RayExecutor, root: Path, cluster: LocalRayCluster
) -> None:
    code = "import time; print('be' + 'fore', flush=True); time.sleep(2); print('af' + 'ter')"
    s = spec(root, code)
    ref = executor.launch(s)
    again = RayExecutor(
        root / "run", node=HEAD, address=cluster.address, worker_dir=root / "workers"
    )
    assert again.adopt(ref)
    status = wait(again, ref)
    assert status.state == "succeeded"
    log = s.log_path.read_text()
    assert log.count("starting at") == 1 and "\nbefore\n" in log and "\nafter\n" in log


def test_a_node_without_a_ray_node_is_refused_and_nothing_is_left(
    cluster: LocalRayCluster, root: Path
) -> None:
    ex = RayExecutor(root / "run-missing", node=HEAD, address=cluster.address, start_timeout_s=2.0)
    s = spec(root, "print('never')", (Worker("nowhere"),))
    with pytest.raises(Unavailable, match="no Ray node offers underlay_node:nowhere"):
        ex.launch(s)
    assert not (root / "run-missing" / f"{s.job_id}.1").exists()
    with pytest.raises(InvalidInput, match="the job has no command"):
        ex.launch(replace(s, command=()))


def test_workers_are_sandboxed_like_local_jobs_but_reach_the_ray_cluster(
    executor: RayExecutor, root: Path, cluster: LocalRayCluster
) -> None:
    if not executor.isolation.namespaces and _worker_mode(root) == "none":
        pytest.skip("this machine cannot isolate jobs")
    host, port = cluster.address.split(":")
    code = f"""
        import os, socket
        def ls(path):
            return sorted(os.listdir(path)) if os.path.exists(path) else "absent"
        print("home:", ls({str(root / "home")!r}))
        print("workers:", ls({str(root / "workers")!r}))
        with socket.create_connection(({host!r}, {port})):
            print("reached the Ray GCS")
    """
    s = spec(root, code, (Worker(OTHER),))
    status = wait(executor, executor.launch(s))
    log = s.log_path.read_text()
    assert status.state == "succeeded", log
    assert "home: []" in log or "home: absent" in log  # the platform's keys are out of sight
    assert f"workers: ['{s.job_id}.1.0']" in log  # no other worker's folder, only its own
    assert "reached the Ray GCS" in log  # Ray's own ports are not isolated


def _worker_mode(root: Path) -> str:
    from underlay.compute.executors.isolation import from_settings

    return from_settings(ComputeSettings(), root / "home", root / "workers").mode


def _run_a_gang(ul: Client) -> None:
    code = "import os; print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'])"
    job = ul.submit_job("p", [sys.executable, "-c", code], gang=2, cpus=0.1)
    done = ul.wait_job("p", job.id, timeout_s=WAIT_S)
    log = b"".join(ul.job_logs("p", job.id)).decode()
    assert done.state == "succeeded", (done.reason, log)
    assert "[worker 0] rank 0 of 2\n" in log and "[worker 1] rank 1 of 2\n" in log


class RayServer(ServerProcess):
    """`underlay up` with UNDERLAY_EXECUTOR=ray and PostgreSQL, as a user would start it."""

    def __init__(self, home: Path, store_url: str, temp: Path) -> None:
        super().__init__(home)
        self.store_url, self.temp = store_url, temp

    def extra_env(self) -> dict[str, str]:
        return {
            "UNDERLAY_EXECUTOR": "ray",
            "UNDERLAY_STORE__URL": self.store_url,
            "UNDERLAY_COMPUTE__NODE_NAME": "laptop",
            "UNDERLAY_COMPUTE__RAY_TEMP_DIR": str(self.temp),
            "UNDERLAY_COMPUTE__HEARTBEAT_INTERVAL_S": "0.2",
            "UNDERLAY_COMPUTE__LOOP_INTERVAL_S": "0.1",
        }


@pytest.mark.postgres
def test_underlay_up_with_the_ray_executor_and_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The move from laptop to cluster by configuration: `underlay up` starts its own Ray
    cluster on 127.0.0.1, runs a gang on it, and takes every Ray process down when it stops."""
    _reset_pg(pg_url)
    temp = Path(tempfile.mkdtemp(prefix="ulr-", dir="/tmp"))  # short: Ray socket paths
    server = RayServer(tmp_path / "home", pg_url, temp)
    try:
        server.start(ready_within_s=120)
        assert server.proc is not None
        with Client(server.url, ADMIN_TOKEN) as ul:
            ul.create_project("p")
            deadline = time.monotonic() + WAIT_S
            while not ul.list_nodes():
                assert time.monotonic() < deadline, "the agent never registered"
                time.sleep(0.1)
            _run_a_gang(ul)
        tree = psutil.Process(server.proc.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree), "Ray runs under underlay up"
    finally:
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
        assert server.stop() in (0, -signal.SIGTERM), server.output()
        assert "Application shutdown complete" in server.output()
        shutil.rmtree(temp, ignore_errors=True)
    left = [p.pid for p in tree if _alive(p.pid)]
    assert not left, f"Ray processes outlived underlay up: {left}"


def test_an_attempt_this_agent_has_no_record_of_is_lost(executor: RayExecutor, root: Path) -> None:
    ref = ProcessRef(10_000, 1, 1, 0.0, root / "run" / "10000.1" / "status.json")
    assert not executor.adopt(ref)
    status = executor.poll(ref)
    assert status is not None and status.state == "lost"
    assert status.reason == "no record of this Ray attempt on this agent"


def test_a_job_cannot_drive_the_ray_cluster_without_its_token(
    executor: RayExecutor, root: Path, cluster: LocalRayCluster
) -> None:
    """Ray runs what its clients submit as the user Ray runs as, outside our sandbox: the
    cluster underlay starts answers only clients with its token, which jobs never get."""
    code = f"""
        from ray._raylet import GcsClient
        try:
            GcsClient(address={cluster.address!r}).internal_kv_put(b"k", b"v", True, None)
            print("wrote to the GCS")
        except Exception as exc:
            print("refused:", type(exc).__name__, str(exc)[:300])
    """
    s = spec(root, code, (Worker(HEAD),))
    status = wait(executor, executor.launch(s))
    log = s.log_path.read_text()
    assert status.state == "succeeded", log
    assert "\nwrote to the GCS" not in log and "\nrefused: AuthenticationError" in log, log


def test_a_process_that_drove_one_cluster_drives_another_with_its_token(
    executor: RayExecutor, root: Path
) -> None:
    """Ray keeps the first token it read for the life of the process: a process that was a
    driver of one cluster (here the module's, or another test module's in the same pytest
    worker) takes the next cluster's token when it connects to it, and back."""
    wait(executor, executor.launch(spec(root, "print('here')", (Worker(HEAD),))))
    executor.close()  # the module's executor connects again on its next launch
    temp = Path(tempfile.mkdtemp(prefix="ulr-", dir="/tmp"))
    other = LocalRayCluster(temp)
    try:
        other.start_head("elsewhere")
        there = RayExecutor(
            root / "run-elsewhere",
            node="elsewhere",
            address=other.address,
            worker_dir=root / "workers-elsewhere",
            node_ip=HOST,
            auth_token_path=other.token_path,
        )
        try:
            s = spec(root, "print('there')", (Worker("elsewhere"),))
            assert wait(there, there.launch(s)).state == "succeeded", s.log_path.read_text()
        finally:
            there.close()
    finally:
        other.stop()
        shutil.rmtree(temp, ignore_errors=True)
    s = spec(root, "print('here again')", (Worker(OTHER),))
    assert wait(executor, executor.launch(s)).state == "succeeded", s.log_path.read_text()

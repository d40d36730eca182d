"""The serving tests again, on the Ray executor: a live server whose agent starts its own Ray
cluster on 127.0.0.1 (``compute.executor = "ray"``), so each replica's service job runs as a
Ray actor's sandboxed process placed where our scheduler chose.

The tests are the same functions as the embedded server's, imported from their modules (pytest
runs them here against this module's ``live``): the Open Inference Protocol with the real
``tritonclient``, bad tensors refused with 400, another project's token answered 404, JSON
predictions over two replicas, a replica killed under load healed without a lost request, and a
broken canary rolled back by itself. A representative subset, to keep the suite's time: the
data plane in front of the replicas is the same code.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import LiveServer, sqlite_url
from tests.serving import test_deployments as deployments
from tests.serving import test_inference_v2 as v2
from tests.serving import test_traffic as traffic
from tests.serving.conftest import PROJECT, X, model, ready, serve

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'underlay[ray]')", allow_module_level=True)
pytestmark = [pytest.mark.ray, pytest.mark.slow]

SEEN: list[psutil.Process] = []  # the replica's process and its Ray ancestors

# In this order (pytest runs a module's tests in the order they are bound here): the node has
# the machine's CPUs (two in CI) and each replica takes one, so the tests that need two run
# before the V2 tests' deployment, which stays up for the rest of the module.
test_a_broken_canary_is_rolled_back_by_itself_and_audited = (
    traffic.test_a_broken_canary_is_rolled_back_by_itself_and_audited
)
test_deploy_and_predict_through_json = deployments.test_deploy_and_predict_through_json
test_a_killed_replica_under_load_loses_no_request_and_heals = (
    deployments.test_a_killed_replica_under_load_loses_no_request_and_heals
)
deployed, triton = v2.deployed, v2.triton
test_tritonclient_reads_metadata_and_health = v2.test_tritonclient_reads_metadata_and_health
test_tritonclient_infers_with_binary_and_json_tensors = (
    v2.test_tritonclient_infers_with_binary_and_json_tensors
)
test_bad_tensors_are_400_naming_the_input_and_the_replica_keeps_serving = (
    v2.test_bad_tensors_are_400_naming_the_input_and_the_replica_keeps_serving
)
test_another_projects_token_gets_404_on_every_v2_route = (
    v2.test_another_projects_token_gets_404_on_every_v2_route
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("serving-ray")
    temp = Path(tempfile.mkdtemp(prefix="ulr-", dir="/tmp"))  # short: Ray socket paths
    try:
        yield from serve(tmp, sqlite_url(sqlite_template, tmp), executor="ray", ray_temp_dir=temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    left = [p.pid for p in SEEN if _alive(p)]
    assert not left, f"replica or Ray processes outlived the server: {left}"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_replica_runs_under_a_ray_worker_and_serves(live: LiveServer) -> None:
    """The replica's process is a child of a Ray worker (the attempt's actor) of the cluster
    the agent started, not of the agent, and it serves predictions through the data plane."""
    with live.client() as admin:
        admin.deploy(PROJECT, "churn-ray", "churn@champion", replicas=1)
        found = ready(admin, "churn-ray", 1)
        (replica,) = found.replicas
        assert replica.job_id is not None
        process = psutil.Process(deployments._pid_of(live, replica.job_id))
        ancestors = process.parents()
        me = psutil.Process()
        mine = {me.pid, *(p.pid for p in me.parents())}
        SEEN.extend(p for p in (process, *ancestors) if p.pid not in mine)
        answer = admin.predict(PROJECT, "churn-ray", X[:3].tolist())
        admin.delete_deployment(PROJECT, "churn-ray")
    titles = [" ".join(p.cmdline()) for p in ancestors]
    assert any(t.startswith("ray::AttemptWorker") for t in titles), titles
    assert any("raylet" in t for t in titles), titles
    assert answer["predictions"] == model().predict(X[:3]).tolist()

"""The ASGI application: one FastAPI app over one :class:`~underlay.platform.Platform`."""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI

from underlay import __version__
from underlay.api import docs, problems, server
from underlay.api.hot import HotRoutes
from underlay.api.limits import UploadSlots
from underlay.api.middleware import RequestContextMiddleware
from underlay.api.routes import (
    alerting,
    alerts,
    audit,
    blobs,
    datasets,
    deployments,
    feedback,
    health,
    inference_v2,
    jobs,
    lineage,
    metrics,
    ml_pipelines,
    model_exports,
    models,
    monitoring,
    nodes,
    pipelines,
    projects,
    retrain,
    runs,
    status,
    subjects,
    table_parts,
    tables,
    tokens,
    usage,
    users,
)
from underlay.api.runtime import ComputeRuntime
from underlay.api.timing import RequestTimingMiddleware
from underlay.compute.purge import purge_project
from underlay.config import Settings
from underlay.data import datasets as data_datasets
from underlay.data.tables import TableStore
from underlay.ml import experiments as ml_experiments
from underlay.ml.registry import service as registry
from underlay.monitoring import checks as drift_checks
from underlay.monitoring import loop as retrain_loop
from underlay.monitoring.anomalies import Probes
from underlay.monitoring.loop_driver import LoopDriver
from underlay.monitoring.metrics import api_counts, api_latency_histogram
from underlay.monitoring.worker import AlertWorker, ServingProbes
from underlay.platform import Platform
from underlay.serving import service as serving
from underlay.serving.dataplane import DataPlane
from underlay.serving.runtime import ServingRuntime
from underlay.ui import app as ui

API_PREFIX = "/api/v1"
SWITCH_INTERVAL_S = 0.0005  # see create_app


def create_app(
    platform: Platform | None = None, *, start: bool = True, tune_process: bool = False
) -> FastAPI:
    """The app; builds a Platform from the environment's settings when none is given.
    ``tune_process`` (for a process that only serves, as ``underlay up``'s are): once
    started, move everything start-up built out of the garbage collector's sight, so that a
    full collection under load no longer walks it (tail latency;
    docs/serving-performance.md), and hand the interpreter lock between threads every
    :data:`SWITCH_INTERVAL_S` rather than every 5 ms: a request thread that waited on the
    database gets the lock back soon although the scheduling loop's thread is computing a
    round (submissions under load; docs/compute.md)."""
    platform = platform or Platform(Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start:
            platform.start()
        # tables whose first write died with a server process (leases nobody holds)
        app.state.tables.sweep_unfinished(platform.db, platform.audit)
        runtime = ComputeRuntime(platform)
        app.state.compute = runtime  # /metrics reads its scheduler round times
        runtime.start()
        app.state.serving.start()
        app.state.alerts = alert_worker(app, platform)
        app.state.alerts.start()
        app.state.retrain.start()
        if tune_process:
            gc.collect()
            gc.freeze()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            yield
        finally:
            app.state.alerts.stop()
            await app.state.dataplane.close()
            app.state.retrain.stop()
            app.state.serving.stop()
            stopped = runtime.stop(stop_jobs=app.state.serving.replica_jobs)
            app.state.serving.stopped_with_server(stopped)

    app = FastAPI(
        title="underlay",
        version=__version__,
        summary="Self-hosted AI infrastructure platform",
        lifespan=lifespan,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # served with local assets by api.docs
        redoc_url=None,
    )
    app.state.platform = platform
    platform.project_purgers.append(functools.partial(purge_project, home=platform.settings.home))
    platform.project_purgers.append(
        lambda session, project: data_datasets.purge_project(session, project.id)
    )
    platform.project_purgers.append(
        lambda session, project: registry.purge_project(session, project.id)
    )
    platform.project_purgers.append(
        lambda session, project: ml_experiments.purge_project(session, project.id)
    )
    platform.project_purgers.append(
        lambda session, project: serving.purge_project(session, platform, project)
    )
    platform.project_purgers.append(
        lambda session, project: retrain_loop.purge_project(session, project.id)
    )
    platform.project_purgers.append(
        lambda session, project: drift_checks.purge_project(session, project.id)
    )
    app.state.tables = table_store = TableStore(platform.settings)
    platform.project_purgers.append(
        lambda session, project: table_store.purge_project(session, project.id)
    )
    app.state.dataplane = DataPlane(platform, app.state.tables)
    app.state.serving = ServingRuntime(platform)
    app.state.retrain = LoopDriver(platform)
    app.state.uploads = UploadSlots(platform.settings.server.max_concurrent_uploads)
    app.state.api_latency = api_latency_histogram()
    problems.install(app)
    app.add_middleware(HotRoutes, prefix=API_PREFIX)  # innermost: in front of the router
    app.add_middleware(RequestTimingMiddleware, histogram=app.state.api_latency)
    app.add_middleware(
        RequestContextMiddleware,
        max_json_body=platform.settings.server.max_json_body,
        max_upload=platform.settings.blobs.max_size,
        server=platform.settings.server,
    )
    app.include_router(health.router, include_in_schema=False)  # root probes too
    app.include_router(metrics.router, include_in_schema=False)  # where Prometheus looks
    app.include_router(_api_router())
    docs.install(app, API_PREFIX)
    ui.install(app)  # the dashboard at /, after the API so its routes win
    return app


def alert_worker(app: FastAPI, platform: Platform) -> AlertWorker:
    """The alert worker of this app, reading its API counters and serving's guards."""
    guards = app.state.dataplane.guards
    histogram = app.state.api_latency
    return AlertWorker(
        platform.db,
        platform.keyring,
        platform.settings,
        probes=Probes(
            api_counts=lambda: api_counts(histogram), token_rows=lambda: guards.token_rows
        ),
        serving=ServingProbes(figures=guards.figures, rate_limited=lambda: guards.rate_limited),
    )


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers; settings from the environment."""
    settings = Settings()
    server.configure(settings)  # this worker's protocol instances read it
    return create_app(Platform(settings), tune_process=True)


@functools.cache
def _api_router() -> APIRouter:
    """The API's routes under :data:`API_PREFIX`, built once per process. FastAPI works out
    every route's parameters and models when a router is included (about half a second for
    ours) and keeps that on the included router, so every app of a process (the test suite
    builds hundreds) shares this one instead of working it all out again."""
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    routers = (
        users,
        projects,
        tokens,
        blobs,
        lineage,
        audit,
        nodes,
        jobs,
        usage,
        alerts,
        alerting,
        status,
        datasets,
        tables,
        table_parts,
        pipelines,
        ml_pipelines,
        subjects,
        models,
        model_exports,
        runs,
        deployments,
        inference_v2,
        feedback,
        monitoring,
        metrics,
        retrain,
    )
    for module in routers:
        api.include_router(module.router, responses=problems.PROBLEM_RESPONSES)
    api.include_router(jobs.by_id, responses=problems.PROBLEM_RESPONSES)  # global job ids
    api.include_router(alerting.hooks, responses=problems.PROBLEM_RESPONSES)
    api.include_router(runs.experiments_router, responses=problems.PROBLEM_RESPONSES)
    return api

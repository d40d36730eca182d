"""ML pipelines: ``@step`` functions, a ``@pipeline`` DAG of their calls, sweeps, run as
jobs on the scheduler with cached outputs (see docs/pipelines.md)."""

from __future__ import annotations

from underlay.ml.pipelines.dsl import Handle, Pipeline, Step, pipeline, ref, step, sweep
from underlay.ml.pipelines.execute import log_metric
from underlay.ml.pipelines.sweeps import choice, loguniform, randint, uniform

__all__ = [
    "Handle",
    "Pipeline",
    "Step",
    "choice",
    "log_metric",
    "loguniform",
    "pipeline",
    "randint",
    "ref",
    "step",
    "sweep",
    "uniform",
]

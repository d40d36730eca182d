"""Executors run placed jobs. Admission (the scheduler) decides whether and where; an executor
decides how. Executors are plugins that declare what they support."""

from underlay.compute.executors.base import (
    Executor,
    ExitStatus,
    LaunchSpec,
    ProcessRef,
    UsageSample,
    Worker,
)

__all__ = ["Executor", "ExitStatus", "LaunchSpec", "ProcessRef", "UsageSample", "Worker"]

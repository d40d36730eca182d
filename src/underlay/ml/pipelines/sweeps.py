"""What a sweep is made of: its trials and how the best is picked, and the distributions
random search draws parameters from (:func:`underlay.ml.pipelines.sweep` uses them)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from underlay.errors import InvalidInput


@dataclass
class Distribution:
    """A parameter's distribution for random search."""

    kind: Literal["uniform", "loguniform", "randint", "choice"]
    args: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(*self.args)
        if self.kind == "loguniform":
            low, high = self.args
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        if self.kind == "randint":
            return rng.randint(*self.args)
        return rng.choice(list(self.args[0]))


def uniform(low: float, high: float) -> Distribution:
    return Distribution("uniform", (float(low), float(high)))


def loguniform(low: float, high: float) -> Distribution:
    if not 0 < low < high:
        raise InvalidInput(f"loguniform needs 0 < low < high, got {low} and {high}")
    return Distribution("loguniform", (float(low), float(high)))


def randint(low: int, high: int) -> Distribution:
    return Distribution("randint", (int(low), int(high)))


def choice(values: Sequence[Any]) -> Distribution:
    if not values:
        raise InvalidInput("choice needs at least one value")
    return Distribution("choice", (list(values),))


@dataclass
class SweepSpec:
    """A sweep's trials (one parameter set each) and how the best is picked."""

    metric: str
    mode: Literal["max", "min"]
    trials: list[dict[str, Any]]
    kind: Literal["grid", "random"]
    seed: int | None

"""A scikit-learn estimator of our own, importable by path: a type skops does not trust."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class ThresholdClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def fit(self, x: Any, y: Any) -> ThresholdClassifier:
        self.classes_ = np.unique(y)
        return self

    def predict(self, x: Any) -> Any:
        return (np.asarray(x)[:, 0] > self.threshold).astype(int)

"""A bounded load of JSON predictions from a few threads, each answer checked against the
model version that answered it."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tests.serving.conftest import PROJECT, X, model

EXPECTED = {1: model(1.0).predict(X).tolist(), 2: model(0.01).predict(X).tolist()}


@dataclass
class Load:
    url: str
    token: str
    name: str
    threads: int = 4
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: Counter[int] = field(default_factory=Counter)
    wrong: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for seed in range(self.threads):
            worker = threading.Thread(target=self._run, args=(seed,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        path = f"{self.url}/api/v1/projects/{PROJECT}/deployments/{self.name}/predict"
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(headers=headers, timeout=60) as http:
            while not self._stop.is_set():
                start = int(rng.integers(0, len(X) - 3))
                rows = X[start : start + 3].tolist()
                response = http.post(path, json={"records": rows})
                self._check(response, start)

    def _check(self, response: httpx.Response, start: int) -> None:
        with self._lock:
            if response.status_code == 503 and response.headers.get("retry-after"):
                self.outcomes["retryable"] += 1
                return
            if response.status_code != 200:
                self.outcomes[f"http {response.status_code}"] += 1
                self.wrong.append(response.text[:300])
                return
            body = response.json()
            version = body["model_version"]
            if body["predictions"] != EXPECTED[version][start : start + 3]:
                self.outcomes["wrong"] += 1
                self.wrong.append(body)
                return
            self.outcomes["ok"] += 1
            self.versions[version] += 1

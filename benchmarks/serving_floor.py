"""The floor of ``benchmarks/serving.py``: the least a FastAPI + uvicorn app can do to serve
the model, with no auth, validation, logging or batching.

``POST /predict`` takes the body of underlay's JSON route (``{"records": [{"f0": ..}, ..]}``)
and answers ``{"predictions": [...]}`` (serialised with ``json.dumps``, no response model);
``GET /health`` answers a constant, the floor of a trivial route. The model is the seeded
LogisticRegression fitted from the data in ``UNDERLAY_BENCH_FLOOR_DATA`` (an ``.npz`` with
``X``, ``y`` and ``seed``; without it, only ``/health`` serves).
Run: ``uvicorn serving_floor:app --app-dir benchmarks --workers 2``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response


def fit(path: str) -> Any:
    from sklearn.linear_model import LogisticRegression

    data = np.load(path)
    return LogisticRegression(random_state=int(data["seed"]), max_iter=1000).fit(
        data["X"], data["y"]
    )


_data = os.environ.get("UNDERLAY_BENCH_FLOOR_DATA")
model: Any = fit(_data) if _data else None  # without data, only /health (api_overhead.py)
features = [f"f{i}" for i in range(model.n_features_in_)] if model is not None else []
app = FastAPI()


@app.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@app.post("/predict")
async def predict(request: Request) -> Response:
    records = (await request.json())["records"]
    x = np.array([[r[f] for f in features] for r in records], dtype=np.float64)
    body = json.dumps({"predictions": model.predict(x).tolist()})
    return Response(body, media_type="application/json")

"""The retraining loop's evaluation job: champion and challenger on the held-out slice.

Run by the loop as a sandboxed job (``python -m underlay.monitoring.loop_eval_job``; see
:mod:`underlay.monitoring.loop_eval`): with its job-scoped token it downloads the slice (an
Arrow IPC blob of its project), loads both versions through the SDK's verified path, scores
the same rows with each, and prints one line, ``underlay-retrain-eval {"champion": …,
"challenger": …, "rows": …}``, last. Any failure is one ``error:`` line on stderr and exit
status 1: the job fails, and the run with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import pyarrow as pa

from underlay.monitoring.loop_eval import RESULT_PREFIX, inputs_of, score


def predict(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The model's single output on ``inputs``, flat, fed as the replica feeds it."""
    from underlay.serving.replica import predict_batch

    signature = getattr(model, "signature", None)
    names = [i.name for i in getattr(signature, "inputs", None) or []]
    if len(inputs) > 1 and set(names) == set(inputs):
        inputs = {name: inputs[name] for name in names}  # the order the model was fitted in
    result = predict_batch(model, {k: v.astype(np.float32) for k, v in inputs.items()})
    return np.asarray(next(iter(result.values()))).reshape(-1)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Both scores on the slice ``args.data``."""
    from underlay.client import Client

    with Client.from_env() as client:
        data = client.download_blob(args.project, args.data)
        rows = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        truth = np.asarray(rows.column("label_value").to_pylist(), dtype=np.float64)
        inputs = inputs_of(rows)
        scores: dict[str, Any] = {}
        for role, version in (("champion", args.champion), ("challenger", args.challenger)):
            model = client.load_model(args.project, f"{args.model}@{version}")
            scores[role] = round(score(args.task, truth, predict(model, inputs)), 6)
    return {**scores, "rows": rows.num_rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m underlay.monitoring.loop_eval_job")
    parser.add_argument("--project", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--champion", type=int, required=True)
    parser.add_argument("--challenger", type=int, required=True)
    parser.add_argument("--task", choices=("classification", "regression"), required=True)
    parser.add_argument("--data", required=True, help="the held-out slice's blob digest")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args)
    except Exception as error:  # user code (the models) inside: one line, a failed job
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        print(f"error: evaluation failed: {message}"[:1000], file=sys.stderr, flush=True)
        return 1
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

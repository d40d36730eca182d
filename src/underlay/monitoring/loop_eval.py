"""Champion against challenger on a held-out slice of recent labelled traffic.

The slice is the newest ``holdout_share`` of the deployment's logged rows that have a label
(:func:`underlay.serving.feedback.joined`), at most :data:`MAX_ROWS`. Both versions are
loaded through the registry's verified path (signature and every file's hash) and score the
same rows: accuracy for a classifier, -RMSE for a regressor (so higher is better for both);
the challenger wins when its score is at least ``margin`` above the champion's. Fewer than
``min_rows`` labelled rows is no evidence: the challenger does not win, and the reason says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from underlay.serving.predlog import INPUT_PREFIX

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from underlay.platform import Platform
    from underlay.store.models import Project

MAX_ROWS = 100_000


def holdout(table: pa.Table, share: float) -> pa.Table:
    """The newest ``share`` of ``table``'s rows (by log time), at most :data:`MAX_ROWS`."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([("ts", "ascending")])
    keep = min(MAX_ROWS, max(1, round(table.num_rows * share)))
    return table.slice(table.num_rows - keep)


def inputs_of(table: pa.Table) -> dict[str, np.ndarray]:
    """The model inputs the log recorded (``in_<name>`` columns), as the replica got them."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        if name.startswith(INPUT_PREFIX):
            values = table.column(name).to_pylist()
            out[name[len(INPUT_PREFIX) :]] = np.asarray(values, dtype=np.float64)
    return out


def load_version(
    session: Session, platform: Platform, project: Project, model: str, version: int, folder: Path
) -> Any:
    """A registered version, verified, loaded from ``folder``."""
    from sqlalchemy import select

    from underlay.ml import flavors
    from underlay.ml.registry.models import ModelVersionFile
    from underlay.ml.registry.service import get_version, verify_version

    row = get_version(session, project.id, model, version)
    verify_version(session, platform.blobs, platform.signer, project.id, model, row)
    files = session.scalars(select(ModelVersionFile).where(ModelVersionFile.version_id == row.id))
    for entry in files:
        target = folder / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for chunk in platform.blobs.open(session, project.id, entry.digest):
                out.write(chunk)
    return flavors.load_model(folder, verified=True)


def _predict(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    from underlay.serving.replica import predict_batch

    signature = getattr(model, "signature", None)
    names = [i.name for i in getattr(signature, "inputs", None) or []]
    if len(inputs) > 1 and set(names) == set(inputs):
        inputs = {name: inputs[name] for name in names}  # the order the model was fitted in
    result = predict_batch(model, {k: v.astype(np.float32) for k, v in inputs.items()})
    return np.asarray(next(iter(result.values()))).reshape(-1)


def score(task: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    """Accuracy, or -RMSE: higher is better."""
    if task == "regression":
        return -float(np.sqrt(np.mean((truth.astype(float) - predicted.astype(float)) ** 2)))
    return float(np.mean(truth.astype(float) == predicted.astype(float)))


def evaluate(
    session: Session,
    platform: Platform,
    project: Project,
    deployment: str,
    model: str,
    champion: int,
    challenger: int,
    policy: dict[str, Any],
) -> dict[str, Any]:
    """The evaluation's figures and verdict: ``{metric, rows, champion, challenger, margin,
    wins, reason}``."""
    from underlay.data.tables import TableStore
    from underlay.serving.feedback import joined

    task = policy.get("task", "classification")
    metric = "neg_rmse" if task == "regression" else "accuracy"
    labelled = joined(session, TableStore(platform.settings), project.id, deployment)
    rows = holdout(labelled, float(policy["holdout_share"]))
    base = {"metric": metric, "rows": rows.num_rows, "labelled": labelled.num_rows}
    base |= {"margin": policy["margin"], "champion": None, "challenger": None}
    if rows.num_rows < int(policy["min_rows"]) or "label_value" not in rows.column_names:
        why = (
            f"too few labelled rows to compare: {rows.num_rows} in the held-out slice, "
            f"{policy['min_rows']} needed; the champion stays"
        )
        return {**base, "wins": False, "reason": why}
    truth = np.asarray(rows.column("label_value").to_pylist(), dtype=np.float64)
    inputs = inputs_of(rows)
    scores = {}
    for role, version in (("champion", champion), ("challenger", challenger)):
        with tempfile.TemporaryDirectory(prefix="underlay-eval-") as folder:
            loaded = load_version(session, platform, project, model, version, Path(folder))
            scores[role] = round(score(task, truth, _predict(loaded, inputs)), 6)
    gain = scores["challenger"] - scores["champion"]
    wins = gain >= float(policy["margin"])
    verdict = "wins" if wins else "does not win"
    reason = (
        f"challenger {model}@{challenger} {verdict}: {metric} {scores['challenger']} vs "
        f"champion {scores['champion']} on {rows.num_rows} held-out labelled rows "
        f"(margin {policy['margin']})"
    )
    return {**base, **scores, "gain": round(gain, 6), "wins": wins, "reason": reason}

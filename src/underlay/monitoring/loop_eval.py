"""Champion against challenger on a held-out slice of recent labelled traffic, in a job.

The server never loads a model. Both versions were made by user code (the training pipeline
runs as a job), and loading a model runs code its author chose (a pickle, a skops file's
recorded types, a TorchScript or class-based model), so the comparison runs where user code
runs: in a sandboxed job (DESIGN.md, invariant 6).

The server picks the slice: the newest ``holdout_share`` of the deployment's logged rows that
have a label (:func:`underlay.serving.feedback.joined`), at most :data:`MAX_ROWS`. Fewer than
``min_rows`` is no evidence: no job, the challenger does not win and the reason says so.
Otherwise the slice's model inputs and labels are stored as an Arrow IPC file (a blob of the
project) and :func:`submit` starts :mod:`underlay.monitoring.loop_eval_job` as the policy's
owner, with the policy's resources and variables. The job loads both versions with its
job-scoped token through the SDK's verified path (signature and every file's hash), scores
the same rows (accuracy for a classifier, -RMSE for a regressor, so higher is better for
both) and prints one result line, :data:`RESULT_PREFIX` and JSON. :func:`collect` reads that
line from the end of the job's log (only the job writes its own log) and the server decides:
the challenger wins when its score is at least ``margin`` above the champion's.

A job can report any scores it likes for its own run: that changes only what its own
project's loop does with its own deployment, which that project's users steer anyway (they
write the training pipeline). It cannot reach another run: it learns nothing but its own
slice's digest, its token is its project's, and its result is read only from its own log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from underlay.errors import InvalidInput
from underlay.serving.predlog import INPUT_PREFIX

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from underlay.identity import Actor
    from underlay.monitoring.loop_models import RetrainRun
    from underlay.platform import Platform
    from underlay.store.models import Project

MAX_ROWS = 100_000
RESULT_PREFIX = "underlay-retrain-eval "
TAIL_BYTES = 64 * 1024  # the result is the job's last line: read no more of its log
SLICE_MEDIA_TYPE = "application/vnd.apache.arrow.file"


class EvalReport(BaseModel):
    """What the evaluation job reports: both scores on the rows it was given."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    champion: float
    challenger: float
    rows: int = Field(ge=0)


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


def score(task: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    """Accuracy, or -RMSE: higher is better."""
    if task == "regression":
        return -float(np.sqrt(np.mean((truth.astype(float) - predicted.astype(float)) ** 2)))
    return float(np.mean(truth.astype(float) == predicted.astype(float)))


def prepare(
    session: Session, platform: Platform, project: Project, deployment: str, policy: dict[str, Any]
) -> tuple[dict[str, Any], pa.Table | None]:
    """The evaluation's figures so far and its held-out slice; no slice (and a verdict) when
    there are too few labelled rows to compare."""
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
        return {**base, "wins": False, "reason": why}, None
    return base, rows


def slice_file(rows: pa.Table) -> bytes:
    """The slice as the job reads it: the labels and the model inputs, an Arrow IPC file."""
    keep = ["label_value", *(n for n in rows.column_names if n.startswith(INPUT_PREFIX))]
    sink = pa.BufferOutputStream()
    table = rows.select(keep)
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def eval_command(
    project: str, model: str, champion: int, challenger: int, task: str, digest: str
) -> list[str]:
    """What the evaluation job runs (with the server's interpreter, as serving's replicas)."""
    return [
        sys.executable, "-m", "underlay.monitoring.loop_eval_job", "--project", project,
        "--model", model, "--champion", str(champion), "--challenger", str(challenger),
        "--task", task, "--data", digest,
    ]  # fmt: skip


def submit(
    session: Session,
    platform: Platform,
    project: Project,
    run: RetrainRun,
    model: str,
    owner: Actor,
    base: dict[str, Any],
    rows: pa.Table,
) -> dict[str, Any]:
    """Store the slice and submit the evaluation job as ``owner``; the figures so far with
    the job's id and the slice's digest."""
    import underlay
    from underlay.compute.jobs import submit_job
    from underlay.compute.schemas import JobCreate

    policy = json.loads(run.policy or "{}")
    assert run.challenger_version is not None
    blob = platform.blobs.put(
        session, project.id, slice_file(rows),
        name=f"retrain-{run.id}-holdout.arrow", media_type=SLICE_MEDIA_TYPE,
        created_by=owner.user_id or None,
    )  # fmt: skip
    task = policy.get("task", "classification")
    source = str(Path(underlay.__file__).resolve().parent.parent)
    body = JobCreate(
        command=eval_command(
            project.name, model, run.champion_version, run.challenger_version, task, blob.digest
        ),
        name=f"retrain-eval-{run.deployment}-{run.id}"[:63],
        env={"PYTHONPATH": source, **policy.get("env", {}), "RETRAIN_RUN": str(run.id)},
        cpus=float(policy.get("cpus", 1.0)),
        memory_mib=int(policy.get("memory_mib", 2048)),
    )
    job, _ = submit_job(
        session, project, owner, body, keyring=platform.keyring, settings=platform.settings
    )
    return {**base, "job": job.id, "data": blob.digest}


def read_report(home: Path, job_id: int) -> EvalReport:
    """The result line the evaluation job printed last (in the server's log of it, under
    ``home``); InvalidInput when there is none or it is not one."""
    from underlay.compute import logs

    text = logs.tail(home, job_id, TAIL_BYTES).decode(errors="replace")
    lines = [s.strip() for s in text.splitlines() if s.strip().startswith(RESULT_PREFIX)]
    if not lines:
        raise InvalidInput(f"evaluation job {job_id} succeeded but reported no scores")
    try:
        return EvalReport.model_validate_json(lines[-1][len(RESULT_PREFIX) :])
    except ValidationError:
        raise InvalidInput(
            f"evaluation job {job_id} reported scores that are not two finite numbers and a "
            "row count"
        ) from None


def collect(home: Path, evaluation: dict[str, Any], model: str, challenger: int) -> dict[str, Any]:
    """The verdict from the finished job's report (read from its log under ``home``):
    ``{metric, rows, champion, challenger, margin, gain, wins, reason, job, data}``."""
    report = read_report(home, int(evaluation["job"]))
    rows = int(evaluation["rows"])
    if report.rows != rows:
        raise InvalidInput(
            f"evaluation job {evaluation['job']} scored {report.rows} rows, not the {rows} "
            "of the held-out slice"
        )
    scores = {"champion": round(report.champion, 6), "challenger": round(report.challenger, 6)}
    margin = float(evaluation["margin"])
    gain = scores["challenger"] - scores["champion"]
    wins = gain >= margin
    verdict = "wins" if wins else "does not win"
    reason = (
        f"challenger {model}@{challenger} {verdict}: {evaluation['metric']} "
        f"{scores['challenger']} vs champion {scores['champion']} on {rows} held-out "
        f"labelled rows (margin {evaluation['margin']})"
    )
    return {**evaluation, **scores, "gain": round(gain, 6), "wins": wins, "reason": reason}

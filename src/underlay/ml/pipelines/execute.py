"""Run one step call: read its inputs, call the function, store its outputs.

The same code runs a call in the driver's process (``--local``) and in a step's job
(``underlay pipelines step``, which the driver submits). Inputs are the blobs the server
recorded for the call; a pickle among them is loaded only when its signature by the platform
checks out (:mod:`underlay.ml.pipelines.serialize`). Outputs go up as blobs of the project,
and the server is told of them (it signs pickles and adds lineage).
"""

from __future__ import annotations

import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from underlay.errors import IntegrityFailure, InvalidInput
from underlay.ml.pipelines import serialize
from underlay.ml.pipelines.dsl import Step, check_type

if TYPE_CHECKING:
    from underlay.client import Client
    from underlay.ml.pipelines.schemas import InputRead, StepRead

_metrics: list[dict[str, float]] = []


def log_metric(name: str, value: float) -> None:
    """Record a metric of the running step (a sweep can pick its best trial by it)."""
    import math

    if not _metrics:
        raise InvalidInput("log_metric() is called inside a running step")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"metric {name!r} must be a finite number, not {value!r}")
    _metrics[-1][str(name)] = float(value)


@contextmanager
def _collecting() -> Iterator[dict[str, float]]:
    found: dict[str, float] = {}
    _metrics.append(found)
    try:
        yield found
    finally:
        _metrics.pop()


def read_input(client: Client, project: str, arg: str, ref: InputRead, signing_key: str) -> Any:
    """An input's value, its bytes verified by digest (and a pickle by signature)."""
    from underlay.crypto import verify_signature

    data = client.download_blob(project, ref.digest)
    signed = False
    if ref.format == "pickle":
        payload = serialize.signed_payload(_project_id(client, project), ref.digest)
        signed = bool(ref.signature) and verify_signature(
            bytes.fromhex(signing_key), payload, bytes.fromhex(ref.signature or "")
        )
        if not signed:
            raise IntegrityFailure(
                f"input {arg} (step {ref.step}, output {ref.output}) is a pickle without a "
                "valid platform signature: refusing to load it"
            )
    return serialize.load(ref.format, data, signed=signed)


def _project_id(client: Client, project: str) -> int:
    return client.read_project(project).id


def run_call(
    client: Client, project: str, record: StepRead, step: Step, signing_key: str
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Call ``step`` on the record's inputs and params; (outputs written, metrics)."""
    hints = step.hints()
    kwargs: dict[str, Any] = {}
    for arg, ref in record.inputs.items():
        value = read_input(client, project, arg, ref, signing_key)
        check_type(f"step {record.key}: input {arg}", value, hints.get(arg))
        kwargs[arg] = value
    kwargs.update(record.params)
    with _collecting() as metrics:
        result = step.function(**kwargs)
    values = _outputs(record.key, step, result, hints.get("return"))
    if len(values) == 1:
        for name, number in serialize.metrics_of(next(iter(values.values()))).items():
            metrics.setdefault(name, number)
    written: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        fmt, data = serialize.dump(value)
        blob = client.upload_blob(
            project, data, name=f"{record.key}.{name}.{fmt}", media_type=serialize.MEDIA[fmt]
        )
        written[name] = {"digest": blob.digest, "format": fmt, "size": blob.size}
    return written, metrics


def _outputs(key: str, step: Step, result: Any, hint: Any) -> dict[str, Any]:
    """The returned value by output name, each checked against the return annotation."""
    names = step.outputs
    if len(names) == 1:
        check_type(f"step {key}: output {names[0]}", result, hint)
        return {names[0]: result}
    if isinstance(result, dict) and set(result) == set(names):
        values = dict(result)
    elif isinstance(result, (tuple, list)) and len(result) == len(names):
        values = dict(zip(names, result, strict=True))
    else:
        raise InvalidInput(
            f"step {key} declares outputs {', '.join(names)}: return a tuple of {len(names)} "
            f"values or a dict with those keys, not {type(result).__name__}"
        )
    hints = typing.get_args(hint) if typing.get_origin(hint) is tuple else ()
    if len(hints) == len(names):
        for name, item_hint in zip(names, hints, strict=True):
            check_type(f"step {key}: output {name}", values[name], item_hint)
    return values


def finish_success(
    client: Client,
    project: str,
    run_id: int,
    record: StepRead,
    outputs: dict[str, dict[str, Any]],
    metrics: dict[str, float],
    attempts: int,
    started: float,
) -> StepRead:
    return client.finish_ml_step(
        project,
        run_id,
        record.key,
        {
            "status": "succeeded",
            "outputs": outputs,
            "metrics": metrics,
            "attempts": attempts,
            "duration_s": round(time.monotonic() - started, 6),
        },
    )


def describe(error: BaseException) -> str:
    """``Type: first line`` of an error (the whole traceback goes to the log)."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text.replace("\x00", "")[:1900]

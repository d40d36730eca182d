"""The JSON form of snapshots rejects malformed documents with the path of the bad field."""

from __future__ import annotations

import json

import pytest

from underlay.compute.scheduler.codec import snapshot_from_json, to_json
from underlay.errors import InvalidInput

from .builders import job, node, snapshot


def _doc() -> dict:
    return json.loads(to_json(snapshot([node("n0")], [job("w", gpus=1)])))


def test_a_document_that_is_not_json_is_invalid_input():
    with pytest.raises(InvalidInput, match="not a JSON document"):
        snapshot_from_json("{nope")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda d: d["nodes"][0].update(cpu_milli="many"),
            r"Snapshot.nodes\[0\].cpu_milli: expected int",
        ),
        (lambda d: d.update(pending={}), r"Snapshot.pending: expected a list"),
        (
            lambda d: d["config"].update(order="random"),
            r"Snapshot.config.order: 'random' is not one of",
        ),
        (
            lambda d: d["pending"][0].update(colour="red"),
            r"Snapshot.pending\[0\]: unknown field\(s\) colour",
        ),
        (lambda d: d["pending"][0].pop("id"), r"Snapshot.pending\[0\]: .*missing 1 required"),
        (lambda d: d.update(clock=True), r"Snapshot.clock: expected float, got True"),
    ],
)
def test_malformed_fields_are_named(edit, match):
    doc = _doc()
    edit(doc)
    with pytest.raises(InvalidInput, match=match):
        snapshot_from_json(json.dumps(doc))

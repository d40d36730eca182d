"""ML pipelines through the SDK against a live server (SQLite and PostgreSQL), steps run in
this process (``local``): the cache, retries, sweeps, lineage and signed pickles."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.ml.pipelines_fixture import PIPELINE
from underlay.errors import Conflict, IntegrityFailure, InvalidInput, NotFound


def _write(tmp_path: Path, text: str = PIPELINE, folder: str = "p") -> Path:
    (tmp_path / folder).mkdir(exist_ok=True)
    path = tmp_path / folder / "pipeline.py"
    path.write_text(textwrap.dedent(text))
    return path


def _statuses(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {s.key: s.status for s in run.steps}


def test_a_run_then_cache_hits_then_misses_on_param_and_code(admin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("shop")
    path = _write(tmp_path)
    first = admin.run_ml_pipeline("shop", path, local=True)
    assert first.status == "succeeded", first.error
    assert set(_statuses(first).values()) == {"succeeded"}
    assert list(_statuses(first)) == ["load", "split", "fit.0", "fit.1", "fit.2", "evaluate"]
    (sweep,) = first.sweeps
    assert (sweep["best"], sweep["best_value"], sweep["trials"]) == (
        "fit.1",
        0.0,
        ["fit.0", "fit.1", "fit.2"],
    )
    steps = {s.key: s for s in first.steps}
    assert steps["fit.1"].params == {"slope": 2.0} and steps["fit.1"].metrics == {"error": 0.0}
    assert steps["evaluate"].metrics == {"mae": 0.0}
    assert steps["evaluate"].inputs["model"].step == "fit.1"  # the best trial stands for the sweep
    assert {o.format for o in steps["split"].outputs.values()} == {"parquet"}
    assert steps["fit.1"].outputs["out"].format == "pickle"
    assert steps["fit.1"].outputs["out"].signature
    assert steps["evaluate"].outputs["out"].format == "json"
    assert steps["load"].resources["memory_mib"] == 256

    again = admin.run_ml_pipeline("shop", path, local=True)
    assert again.status == "succeeded"
    assert set(_statuses(again).values()) == {"cached"}
    assert {s.cached_from_run for s in again.steps} == {first.id}
    assert again.sweeps[0]["best"] == "fit.1"

    reused = admin.lineage("shop", "ml_step", f"{again.id}.load", direction="upstream")
    assert ("ml_step", f"{first.id}.load") in {
        (n["kind"], n["id"]) for n in reused.model_dump()["nodes"]
    }

    bigger = admin.run_ml_pipeline("shop", path, local=True, params={"n": 40})
    assert set(_statuses(bigger).values()) == {"succeeded"}  # new data: nothing reusable

    path.write_text(PIPELINE.replace("return Line(slope)", "return Line(slope * 1.0)"))
    changed = admin.run_ml_pipeline("shop", path, local=True)
    assert _statuses(changed) == {
        "load": "cached",
        "split": "cached",
        "fit.0": "succeeded",
        "fit.1": "succeeded",
        "fit.2": "succeeded",
        # the changed fit gave the same bytes, so what reads them is a hit again
        "evaluate": "cached",
    }
    # an output whose blob was deleted is no cache hit: the step runs again (same bytes back)
    admin.delete_blob("shop", steps["load"].outputs["out"].digest)
    rebuilt = admin.run_ml_pipeline("shop", path, local=True)
    assert _statuses(rebuilt)["load"] == "succeeded" and _statuses(rebuilt)["split"] == "cached"
    assert [r.id for r in admin.list_ml_runs("shop", "line")][1:] == [
        changed.id,
        bigger.id,
        again.id,
        first.id,
    ]


def test_a_failing_step_is_retried_then_fails_and_skips_what_reads_it(
    admin, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("shop")
    text = PIPELINE.replace('@step(memory="256Mi")', '@step(memory="256Mi", retries=2)').replace(
        "    return pa.table(", "    raise ValueError('no data today')\n    return pa.table("
    )
    run = admin.run_ml_pipeline("shop", _write(tmp_path, text), local=True)
    assert run.status == "failed"
    assert run.error == "step load: after 3 attempts: ValueError: no data today"
    steps = {s.key: s for s in run.steps}
    assert (steps["load"].status, steps["load"].attempts) == ("failed", 3)
    assert steps["split"].status == "skipped"
    assert steps["split"].error == "input data comes from step load, which failed"
    assert {steps[f"fit.{i}"].status for i in range(3)} == {"skipped"}
    assert steps["evaluate"].status == "skipped"
    assert run.sweeps[0]["best"] is None


def test_a_sweep_by_a_returned_metric_and_random_search(admin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("shop")
    text = """
    from underlay.ml.pipelines import pipeline, step, sweep, uniform

    @step
    def score(x: float) -> dict:
        return {"loss": (x - 0.3) ** 2, "x": x}

    @pipeline
    def search():
        sweep(score, space={"x": uniform(0, 1)}, trials=5, seed=3, metric="loss", mode="min")
    """
    run = admin.run_ml_pipeline("shop", _write(tmp_path, text), local=True)
    (sweep,) = run.sweeps
    losses = {s.key: s.metrics["loss"] for s in run.steps}
    assert sweep["best"] == min(losses, key=losses.__getitem__)
    assert (sweep["kind"], sweep["seed"], len(sweep["trials"])) == ("random", 3, 5)
    xs = [s.params["x"] for s in run.steps]
    rerun = admin.run_ml_pipeline("shop", _write(tmp_path, text), local=True)
    assert [s.params["x"] for s in rerun.steps] == xs  # seeded: the same trials, all cached
    assert {s.status for s in rerun.steps} == {"cached"}


def test_lineage_links_every_output_to_its_step_and_blob(admin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("shop")
    run = admin.run_ml_pipeline("shop", _write(tmp_path), local=True)
    steps = {s.key: s for s in run.steps}
    graph = admin.lineage("shop", "ml_output", f"{run.id}.evaluate.out", direction="upstream")
    ids = {(n["kind"], n["id"]) for n in graph.model_dump()["nodes"]}
    assert ("ml_step", f"{run.id}.fit.1") in ids
    assert ("ml_output", f"{run.id}.split.test") in ids
    assert ("ml_step", f"{run.id}.load") in ids
    down = admin.lineage("shop", "ml_output", f"{run.id}.fit.1.out", direction="downstream")
    blobs = {n["id"] for n in down.model_dump()["nodes"] if n["kind"] == "blob"}
    assert blobs == {steps[k].outputs["out"].digest for k in ("fit.1", "evaluate")}


def test_pickles_load_only_with_the_platforms_signature(admin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from underlay.ml.pipelines.execute import read_input
    from underlay.ml.pipelines.schemas import InputRead

    admin.create_project("shop")
    run = admin.run_ml_pipeline("shop", _write(tmp_path), local=True)
    ref = {s.key: s for s in run.steps}["evaluate"].inputs["model"]
    assert read_input(admin, "shop", "model", ref, run.signing_key).slope == 2.0
    forged = InputRead.model_validate({**ref.model_dump(), "signature": "00" * 64})
    with pytest.raises(IntegrityFailure, match="without a valid platform signature"):
        read_input(admin, "shop", "model", forged, run.signing_key)
    unsigned = InputRead.model_validate({**ref.model_dump(), "signature": None})
    with pytest.raises(IntegrityFailure, match="refusing to load it"):
        read_input(admin, "shop", "model", unsigned, run.signing_key)
    admin.create_project("other")  # the same bytes in another project: not signed for it
    admin.upload_blob("other", admin.download_blob("shop", ref.digest))
    with pytest.raises(IntegrityFailure):
        read_input(admin, "other", "model", ref, run.signing_key)


def test_the_server_checks_what_a_driver_reports(admin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    admin.create_project("shop")
    run = admin.create_ml_run("shop", {"pipeline": "hand"})
    code = "ab" * 32
    with pytest.raises(
        InvalidInput, match="input x reads step 'ghost', which this run has not recorded"
    ):
        admin.create_ml_step(
            "shop",
            run.id,
            {
                "key": "b",
                "step": "b",
                "code_digest": code,
                "inputs": {"x": {"step": "ghost", "output": "out"}},
            },
        )
    admin.create_ml_step("shop", run.id, {"key": "a", "step": "a", "code_digest": code})
    with pytest.raises(NotFound, match="job 999 not found in project 'shop'"):
        admin.start_ml_step("shop", run.id, "a", 999)
    with pytest.raises(Conflict, match="input x: step a is still pending"):
        admin.create_ml_step(
            "shop",
            run.id,
            {
                "key": "b",
                "step": "b",
                "code_digest": code,
                "inputs": {"x": {"step": "a", "output": "out"}},
            },
        )
    with pytest.raises(NotFound, match="output out: blob 000000000000 is not in the project"):
        admin.finish_ml_step(
            "shop",
            run.id,
            "a",
            {
                "status": "succeeded",
                "outputs": {"out": {"digest": "0" * 64, "format": "json", "size": 1}},
            },
        )
    blob = admin.upload_blob("shop", b"1")
    admin.finish_ml_step(
        "shop",
        run.id,
        "a",
        {
            "status": "succeeded",
            "outputs": {"out": {"digest": blob.digest, "format": "json", "size": 1}},
        },
    )
    with pytest.raises(Conflict, match=r"step a of run .* has ended already"):
        admin.finish_ml_step("shop", run.id, "a", {"status": "failed"})
    with pytest.raises(InvalidInput, match="step a has no output 'model'"):
        admin.create_ml_step(
            "shop",
            run.id,
            {
                "key": "b",
                "step": "b",
                "code_digest": code,
                "inputs": {"x": {"step": "a", "output": "model"}},
            },
        )
    with pytest.raises(InvalidInput, match="pattern"):
        admin.create_ml_step("shop", run.id, {"key": "C D", "step": "c", "code_digest": code})
    with pytest.raises(InvalidInput, match="best 'z' is not one of its trials"):
        admin.finish_ml_run(
            "shop",
            run.id,
            {
                "status": "succeeded",
                "sweeps": [
                    {
                        "name": "s",
                        "step": "a",
                        "metric": "m",
                        "mode": "max",
                        "kind": "grid",
                        "trials": ["a"],
                        "best": "z",
                    }
                ],
            },
        )
    admin.finish_ml_run("shop", run.id, {"status": "succeeded"})
    audited = {e.action for e in admin.list_audit(project="shop")}
    assert {"ml_pipeline.run.create", "ml_pipeline.step.finish"} <= audited
    with pytest.raises(Conflict, match="has ended already"):
        admin.finish_ml_run("shop", run.id, {"status": "failed"})
    admin.create_project("other")
    with pytest.raises(NotFound):
        admin.read_ml_run("other", run.id)


TIES = """
from underlay.ml.pipelines import pipeline, step, sweep


@step
def flat(x: int) -> dict:
    return {"loss": 1.0}


@pipeline
def ties():
    sweep(flat, grid={"x": [5, 6, 7]}, metric="loss", mode="min")


@pipeline
def other():
    flat(1)
"""


def test_a_tie_goes_to_the_earlier_trial_and_a_file_may_hold_several_pipelines(
    admin, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from underlay.ml.pipelines.loader import load

    admin.create_project("shop")
    path = _write(tmp_path, TIES)
    with pytest.raises(InvalidInput, match="declares pipelines other, ties: name one"):
        admin.run_ml_pipeline("shop", path, local=True)
    run = admin.run_ml_pipeline("shop", load(path, "ties"), local=True)
    assert run.sweeps[0]["best"] == "flat.0"


def test_viewers_read_runs_but_only_members_run_them(server, admin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from underlay.errors import PermissionDenied

    admin.create_project("shop")
    path = _write(tmp_path, TIES.replace("@pipeline\ndef other():\n    flat(1)\n", ""))
    run = admin.run_ml_pipeline("shop", path, local=True)
    admin.create_user("vic", password="correct horse battery")
    admin.add_member("shop", "vic", "viewer")
    with server.client(admin.create_token("vic", user="vic").token) as vic:
        assert vic.read_ml_run("shop", run.id).status == "succeeded"
        assert [r.id for r in vic.list_ml_runs("shop")] == [run.id]
        with pytest.raises(PermissionDenied):
            vic.run_ml_pipeline("shop", path, local=True)

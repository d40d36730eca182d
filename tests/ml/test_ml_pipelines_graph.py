"""Declaring ML pipelines: the graph, its checks, resource requests and sweeps (no server)."""

from __future__ import annotations

import pytest

from underlay.errors import InvalidInput
from underlay.ml.pipelines import choice, loguniform, pipeline, ref, step, sweep, uniform
from underlay.ml.pipelines.dsl import parse_memory


@step
def make(n: int = 3) -> list:  # type: ignore[type-arg]
    return list(range(n))


@step(outputs=("left", "right"))
def halves(items: list) -> tuple[list, list]:  # type: ignore[type-arg]
    return items[: len(items) // 2], items[len(items) // 2 :]


@step
def total(items: list, scale: float = 1.0) -> float:  # type: ignore[type-arg]
    return sum(items) * scale


def test_a_pipeline_is_a_checked_dag_in_run_order() -> None:
    @pipeline
    def sums(n: int = 4) -> None:
        left, right = halves(make(n))
        total(left)
        total(right, scale=2)

    graph = sums.graph({"n": 6})
    assert graph.name == "sums" and graph.params == {"n": 6}
    assert graph.order == ["make", "halves", "total", "total_2"]
    assert graph.calls["make"].params == {"n": 6}
    assert graph.calls["total_2"].inputs["items"].output == "right"
    assert graph.downstream("make") == {"halves", "total", "total_2"}
    assert total([1, 2], scale=3) == 9  # outside a pipeline a step is the plain function


def test_forward_refs_resolve_and_a_cycle_is_named() -> None:
    @pipeline
    def later() -> None:
        total(ref("make"))
        make()

    assert later.graph().order == ["make", "total"]

    @step
    def echo(items: list) -> list:  # type: ignore[type-arg]
        return items

    @pipeline
    def loop() -> None:
        echo(
            ref("echo_2"),
        )
        echo(ref("echo"))

    with pytest.raises(InvalidInput, match=r"pipeline loop has a cycle: echo -> echo_2 -> echo"):
        loop.graph()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            lambda: total(halves(make())["middle"]),
            r"step halves has no output 'middle' \(outputs: left, right\)",
        ),
        (
            lambda: (halves(make()), total(ref("halves.middle"))),
            r"step total: input items: step halves has no output 'middle'",
        ),
        (
            lambda: total(ref("nowhere")),
            r"input items reads step 'nowhere', which the pipeline does not call",
        ),
        (lambda: total(halves(make())), r"step halves has outputs left, right: pick one"),
        (lambda: total(make(), scale="big"), r"step total: parameter scale must be float, not str"),
        (lambda: total(make(), scale=object()), r"parameter scale must be JSON data"),
        (lambda: total(), r"step total: input items is not given"),
        (
            lambda: total(make(), colour=1),
            r"step total: got an unexpected keyword argument 'colour'",
        ),
        (
            lambda: sweep(total, make(), grid={"speed": [1]}, metric="m"),
            r"total takes no parameter 'speed'",
        ),
        (lambda: sweep(total, make(), metric="m"), r"give grid or space"),
        (lambda: sweep(total, make(), grid={"scale": []}, metric="m"), r"0 trials"),
    ],
)
def test_bad_graphs_are_clear_errors(body, message: str) -> None:  # type: ignore[no-untyped-def]
    @pipeline
    def bad() -> None:
        body()

    with pytest.raises(InvalidInput, match=message):
        bad.graph()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cpus": -1}, r"step s: cpus must be between 0.001 and 1024, not -1"),
        ({"cpus": "two"}, r"step s: cpus must be a number, not 'two'"),
        ({"memory": "lots"}, r"step s: memory must be MiB or like '512Mi' or '2Gi', not 'lots'"),
        ({"memory": "1Ki"}, r"memory '1Ki' is outside 16Mi to 16Ti"),
        ({"gpus": 1.5}, r"step s: gpus must be a number, not 1.5"),
        ({"gpus": 1, "gpu_fraction": 0.5}, r"give gpus or gpu_fraction, not both"),
        ({"retries": 11}, r"retries must be 0 to 10"),
        ({"outputs": ("a", "a")}, r"outputs must be distinct names"),
        ({"outputs": ("Bad",)}, r"output name 'Bad' is not a lowercase name"),
    ],
)
def test_bad_resource_requests_are_refused_where_the_step_is_declared(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        step(name="s", **options)(lambda: 1)  # type: ignore[arg-type]


def test_resource_requests_become_job_options() -> None:
    declared = step(
        name="s", cpus=2, memory="1.5Gi", gpu_fraction=0.5, gpu_type="h100", timeout=60
    )(lambda: 1)
    assert declared.resources.job_options() == {
        "cpus": 2.0,
        "memory_mib": 1536,
        "gpu_fraction": 0.5,
        "gpu_type": "h100",
        "max_runtime_s": 60,
    }
    assert (parse_memory("s", 512), parse_memory("s", "1G"), parse_memory("s", "2Gi")) == (
        512,
        954,
        2048,
    )


def test_grid_and_seeded_random_sweeps() -> None:
    @pipeline
    def grid() -> None:
        sweep(total, make(), grid={"scale": [1, 2]}, metric="m")

    spec = grid.graph().calls["total"].sweep
    assert spec is not None and spec.trials == [{"scale": 1}, {"scale": 2}]

    @pipeline
    def search() -> None:
        sweep(
            total,
            make(),
            space={"scale": loguniform(0.01, 1)},
            trials=4,
            seed=7,
            metric="m",
            mode="min",
        )

    first = search.graph().calls["total"].sweep
    again = search.graph().calls["total"].sweep
    assert first is not None and again is not None
    assert first.trials == again.trials and len(first.trials) == 4
    assert all(0.01 <= t["scale"] <= 1 for t in first.trials)
    assert (first.kind, first.seed, first.mode) == ("random", 7, "min")
    assert len({t["scale"] for t in first.trials}) == 4
    assert uniform(0, 1).kind == "uniform" and choice([1]).args == ([1],)


def test_code_digest_ignores_comments_and_decorators_but_not_code() -> None:
    def one(x: int) -> int:
        return x + 1

    def two(x: int) -> int:
        return x + 2

    digest = step(name="f")(one).code_digest()
    assert step(name="f", cpus=4)(one).code_digest() == digest
    assert step(name="f")(two).code_digest() != digest
    assert step(name="f", version="2")(one).code_digest() != digest


def test_code_digest_ignores_comments_and_blank_lines() -> None:
    plain, commented = {}, {}  # type: ignore[var-annotated]
    exec("def f(x):\n    return x + 1\n", plain)
    exec("def f(x):\n    # why: nothing\n\n    return x + 1  # one more\n", commented)
    assert step(name="f")(plain["f"]).code_digest() == step(name="f")(commented["f"]).code_digest()


def test_outputs_take_the_safest_format_and_pickles_need_a_signature() -> None:
    import numpy as np
    import pyarrow as pa

    from underlay.errors import IntegrityFailure
    from underlay.ml.pipelines import serialize

    table = pa.table({"a": [1, 2]})
    assert serialize.dump(table)[0] == "parquet"
    assert serialize.load(*serialize.dump(table)).equals(table)
    assert serialize.dump(table.to_batches()[0])[0] == "parquet"
    fmt, data = serialize.dump(np.arange(3.0))
    assert fmt == "npy" and serialize.load(fmt, data).tolist() == [0.0, 1.0, 2.0]
    assert serialize.dump({"acc": 0.9, "tags": ["a"]}) == ("json", b'{"acc": 0.9, "tags": ["a"]}')
    assert serialize.dump(float("nan"))[0] == "pickle"  # not JSON: NaN is no JSON number
    fmt, data = serialize.dump(np.array(["x"], dtype=object))
    assert fmt == "pickle"
    with pytest.raises(IntegrityFailure, match="refusing to unpickle"):
        serialize.load(fmt, data)
    assert serialize.load(fmt, data, signed=True).tolist() == ["x"]
    assert serialize.metrics_of({"acc": 0.5, "ok": True, "n": 3, "bad": float("inf")}) == {
        "acc": 0.5,
        "n": 3.0,
    }

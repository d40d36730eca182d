"""The pipeline the ML pipeline tests run (written into a temporary folder as pipeline.py)."""

PIPELINE = '''
import pyarrow as pa

from underlay.ml.pipelines import log_metric, pipeline, step, sweep


class Line:
    """A fitted model that only pickle can store (signed by the platform)."""

    def __init__(self, slope: float) -> None:
        self.slope = slope

    def predict(self, x: int) -> float:
        return self.slope * x + 1


@step(memory="256Mi")
def load(n: int = 20) -> pa.Table:
    return pa.table({"x": list(range(n)), "y": [2 * i + 1 for i in range(n)]})


@step(outputs=("train", "test"))
def split(data: pa.Table) -> tuple[pa.Table, pa.Table]:
    k = data.num_rows * 3 // 4
    return data.slice(0, k), data.slice(k)


@step
def fit(train: pa.Table, slope: float) -> Line:
    xs, ys = train.column("x").to_pylist(), train.column("y").to_pylist()
    log_metric("error", sum(abs(y - slope * x - 1) for x, y in zip(xs, ys)) / len(xs))
    return Line(slope)


@step
def evaluate(model: Line, test: pa.Table) -> dict:
    xs, ys = test.column("x").to_pylist(), test.column("y").to_pylist()
    return {"mae": sum(abs(model.predict(x) - y) for x, y in zip(xs, ys)) / len(xs)}


@pipeline
def line(n: int = 20):
    data = load(n)
    train, test = split(data)
    best = sweep(fit, train=train, grid={"slope": [1.0, 2.0, 3.0]}, metric="error", mode="min")
    evaluate(best, test)
'''

"""ML pipelines as Python: ``@step`` functions, a ``@pipeline`` that calls them, and sweeps.

A step is a plain function with typed inputs and outputs and a resource request::

    @step(cpus=1, memory="1Gi", retries=2)
    def train(data: pa.Table, lr: float = 0.1) -> dict: ...

    @pipeline
    def churn(lr: float = 0.1):
        data = load()
        best = sweep(train, data=data, grid={"lr": [0.01, 0.1]}, metric="acc")
        evaluate(best)

Calling a step inside a pipeline does not run it: it adds a *call* to the pipeline's graph and
returns a :class:`Handle` to its outputs, which later calls take as inputs. :func:`ref` names
another call's output by name (``ref("train.model")``), so calls may be written in any order;
the graph is checked when it is built (:meth:`Pipeline.graph`): an unknown call or output, a
cycle, a literal parameter of the wrong type or a bad resource request is an
:class:`~underlay.errors.InvalidInput` that names the step.

How a call runs (as a job, or in this process), and how its outputs are cached and stored, is
:mod:`underlay.ml.pipelines.runner`'s business; this module holds no I/O.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import itertools
import json
import math
import random
import re
import textwrap
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from underlay.errors import InvalidInput
from underlay.ml.pipelines.sweeps import Distribution, SweepSpec, choice

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
_OUTPUT = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?$")
_MEMORY_MIB = {
    None: 1 / 2**20,
    "Ki": 1 / 1024,
    "K": 1000 / 2**20,
    "Mi": 1,
    "M": 1e6 / 2**20,
    "Gi": 1024,
    "G": 1e9 / 2**20,
    "Ti": 1024**2,
    "T": 1e12 / 2**20,
}
DEFAULT_OUTPUT = "out"
MAX_TRIALS = 256


# -- steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What one run of a step asks the scheduler for (the fields of a job's request)."""

    cpus: float = 1.0
    memory_mib: int = 512
    gpus: int = 0
    gpu_fraction: float | None = None
    gpu_type: str | None = None
    timeout_s: float | None = None

    def job_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"cpus": self.cpus, "memory_mib": self.memory_mib}
        if self.gpu_fraction is not None:
            options["gpu_fraction"] = self.gpu_fraction
        else:
            options["gpus"] = self.gpus
        if self.gpu_type is not None:
            options["gpu_type"] = self.gpu_type
        if self.timeout_s is not None:
            options["max_runtime_s"] = self.timeout_s
        return options


def parse_memory(name: str, value: int | str) -> int:
    """MiB from ``512`` (MiB), ``"512Mi"``, ``"2Gi"``, ``"1G"``; 16 MiB to 16 TiB."""
    if isinstance(value, bool):
        raise InvalidInput(f"step {name}: memory must be MiB or like '512Mi' or '2Gi', not {value}")
    if isinstance(value, int):
        mib = float(value)
    else:
        match = _MEMORY.fullmatch(str(value).strip())
        if match is None:
            raise InvalidInput(
                f"step {name}: memory must be MiB or like '512Mi' or '2Gi', not {value!r}"
            )
        mib = float(match.group(1)) * _MEMORY_MIB[match.group(2)]
    if not 16 <= mib <= 16 * 1024 * 1024:
        raise InvalidInput(f"step {name}: memory {value!r} is outside 16Mi to 16Ti")
    return math.ceil(mib)


def _resources(
    name: str,
    cpus: float,
    memory: int | str,
    gpus: int,
    gpu_fraction: float | None,
    gpu_type: str | None,
    timeout: float | None,
) -> Resources:
    def number(field: str, value: object, low: float, high: float, integer: bool = False) -> None:
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidInput(f"step {name}: {field} must be a number, not {value!r}")
        if not (low <= value <= high) or (not integer and not math.isfinite(value)):
            raise InvalidInput(
                f"step {name}: {field} must be between {low:g} and {high:g}, not {value!r}"
            )

    number("cpus", cpus, 0.001, 1024)
    number("gpus", gpus, 0, 64, integer=True)
    if gpu_fraction is not None:
        number("gpu_fraction", gpu_fraction, 0.001, 1)
        if gpus:
            raise InvalidInput(f"step {name}: give gpus or gpu_fraction, not both")
    if timeout is not None:
        number("timeout", timeout, 1, 30 * 86400)
    if gpu_type is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", str(gpu_type)):
        raise InvalidInput(f"step {name}: gpu_type {gpu_type!r} is not a type name")
    return Resources(float(cpus), parse_memory(name, memory), gpus, gpu_fraction, gpu_type, timeout)


class Step:
    """A function declared with :func:`step`. Called inside a pipeline it adds a call to the
    graph; called anywhere else it is the plain function (handy in unit tests)."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str,
        outputs: tuple[str, ...],
        resources: Resources,
        retries: int,
        version: str,
        cache: bool,
    ) -> None:
        self.function = function
        self.name = name
        self.outputs = outputs
        self.resources = resources
        self.retries = retries
        self.version = version
        self.cache = cache
        self.signature = inspect.signature(function)
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    def __repr__(self) -> str:
        return f"<step {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        builder = _Builder.current
        if builder is None:
            return self.function(*args, **kwargs)
        return builder.call(self, args, kwargs)

    def hints(self) -> dict[str, Any]:
        """The function's annotations, resolved where they can be (else none)."""
        try:
            return typing.get_type_hints(self.function)
        except Exception:  # an annotation that names what is not importable: no checks
            return {}

    def code_digest(self) -> str:
        """SHA-256 of the function's code as Python parses it (comments, blank lines and
        decorators aside), its name, outputs and ``version``: what the cache key covers."""
        try:
            source = textwrap.dedent(inspect.getsource(self.function))
            tree = ast.parse(source)
            node = tree.body[0]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.decorator_list = []
            code = ast.unparse(node)
        except (OSError, TypeError, SyntaxError, IndexError):
            code = self.function.__code__.co_code.hex()  # no source: the bytecode
        text = json.dumps([self.name, code, list(self.outputs), self.version])
        return hashlib.sha256(text.encode()).hexdigest()


def step(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    outputs: Sequence[str] = (DEFAULT_OUTPUT,),
    cpus: float = 1.0,
    memory: int | str = "512Mi",
    gpus: int = 0,
    gpu_fraction: float | None = None,
    gpu_type: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    version: str = "",
    cache: bool = True,
) -> Any:
    """Declare a step: ``@step`` or ``@step(cpus=2, gpus=1, memory="4Gi", retries=2)``.

    ``outputs`` names what it returns: one name (the default, ``out``), or several, when it
    returns a tuple (or a dict) of as many values. ``retries`` reruns a failed attempt (as the
    job's retries); ``version`` changes the cache key without changing the code (for a change
    in a helper the step calls); ``cache=False`` always runs it."""

    def declare(fn: Callable[..., Any]) -> Step:
        label: str = name or str(getattr(fn, "__name__", ""))
        if not _NAME.fullmatch(label):
            raise InvalidInput(
                f"step name {label!r} must be lowercase letters, digits and _ (at most 40)"
            )
        names = tuple(outputs) if not isinstance(outputs, str) else (outputs,)
        if not names or len(set(names)) != len(names):
            raise InvalidInput(f"step {label}: outputs must be distinct names, got {names!r}")
        for output in names:
            if not isinstance(output, str) or not _OUTPUT.fullmatch(output):
                raise InvalidInput(f"step {label}: output name {output!r} is not a lowercase name")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise InvalidInput(f"step {label}: retries must be 0 to 10, not {retries!r}")
        resources = _resources(label, cpus, memory, gpus, gpu_fraction, gpu_type, timeout)
        return Step(
            fn,
            name=label,
            outputs=names,
            resources=resources,
            retries=retries,
            version=str(version),
            cache=cache,
        )

    return declare if function is None else declare(function)


# -- the graph ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handle:
    """The outputs of one call (or the best trial of a sweep), as later calls take them.

    ``handle`` is its only output (when it has one), ``handle["model"]`` one by name, and
    ``a, b = handle`` unpacks several."""

    call: str
    outputs: tuple[str, ...]
    output: str | None = None

    def __getitem__(self, name: str) -> Handle:
        if name not in self.outputs:
            raise InvalidInput(
                f"step {self.call} has no output {name!r} (outputs: {', '.join(self.outputs)})"
            )
        return Handle(self.call, self.outputs, name)

    def __iter__(self) -> Iterator[Handle]:
        if len(self.outputs) == 1:
            raise InvalidInput(f"step {self.call} has one output; it cannot be unpacked")
        return iter([self[name] for name in self.outputs])

    def selected(self) -> str:
        if self.output is not None:
            return self.output
        if len(self.outputs) != 1:
            raise InvalidInput(
                f"step {self.call} has outputs {', '.join(self.outputs)}: pick one, as "
                f"{self.call}[{self.outputs[0]!r}]"
            )
        return self.outputs[0]


@dataclass(frozen=True)
class Ref:
    """A call's output by name, resolved when the graph is built: ``ref("train.model")``."""

    call: str
    output: str | None = None


def ref(target: str) -> Ref:
    """Another call's output by name (``"train"`` or ``"train.model"``), even one declared
    later in the pipeline."""
    call, _, output = target.partition(".")
    return Ref(call, output or None)


@dataclass
class Call:
    """One node of the graph: a step with its inputs (handles) and literal parameters."""

    key: str
    step: Step
    inputs: dict[str, Handle | Ref] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    sweep: SweepSpec | None = None

    def upstream(self) -> list[str]:
        return sorted({handle.call for handle in self.inputs.values()})


class _Builder:
    """Collects the calls while a pipeline function runs (one builder at a time)."""

    current: _Builder | None = None

    def __init__(self) -> None:
        self.calls: dict[str, Call] = {}

    def call(
        self,
        target: Step,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sweep: SweepSpec | None = None,
        key: str | None = None,
    ) -> Handle:
        if key is None:
            key = target.name
            counter = itertools.count(2)
            while key in self.calls:
                key = f"{target.name}_{next(counter)}"
        elif key in self.calls:
            raise InvalidInput(f"two calls are named {key!r}")
        if not _NAME.fullmatch(key):
            raise InvalidInput(f"call name {key!r} must be lowercase letters, digits and _")
        try:
            bound = target.signature.bind_partial(*args, **kwargs)
        except TypeError as error:
            raise InvalidInput(f"step {key}: {error}") from None
        call = Call(key, target, sweep=sweep)
        for arg, value in bound.arguments.items():
            if isinstance(value, (Handle, Ref)):
                call.inputs[arg] = value
            else:
                call.params[arg] = _literal(key, arg, value)
        self.calls[key] = call
        return Handle(key, target.outputs)


def _literal(key: str, arg: str, value: Any) -> Any:
    """A literal parameter as canonical JSON data (it is part of the cache key)."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"step {key}: parameter {arg} must be JSON data (numbers, strings, lists, dicts) "
            f"or another step's output, not {type(value).__name__}"
        ) from None
    return json.loads(text)


def sweep(
    target: Step,
    *args: Any,
    metric: str,
    mode: Literal["max", "min"] = "max",
    grid: Mapping[str, Sequence[Any]] | None = None,
    space: Mapping[str, Distribution | Sequence[Any]] | None = None,
    trials: int = 10,
    seed: int = 0,
    name: str | None = None,
    **kwargs: Any,
) -> Handle:
    """Fan ``target`` out over parameters, one call (a job) per trial, and return a handle to
    the best trial's outputs: the one whose ``metric`` (returned in a dict, or logged with
    :func:`~underlay.ml.pipelines.log_metric`) is highest (``mode="max"``) or lowest.

    ``grid`` runs every combination of its lists; ``space`` draws ``trials`` parameter sets
    from distributions (:func:`uniform`, :func:`loguniform`, :func:`randint`, :func:`choice`,
    or a list to choose from) with ``random.Random(seed)``, so a seed gives the same trials."""
    builder = _Builder.current
    label = name or target.name
    if builder is None:
        raise InvalidInput("sweep() is called inside a @pipeline function")
    if not isinstance(target, Step):
        raise InvalidInput(f"sweep {label}: the first argument is a @step, not {target!r}")
    if mode not in ("max", "min"):
        raise InvalidInput(f"sweep {label}: mode is 'max' or 'min', not {mode!r}")
    if not isinstance(metric, str) or not metric:
        raise InvalidInput(f"sweep {label}: name the metric that picks the best trial")
    if (grid is None) == (space is None):
        raise InvalidInput(f"sweep {label}: give grid or space (random search), exactly one")
    if grid is not None:
        keys = list(grid)
        for key in keys:
            if isinstance(grid[key], (str, bytes)) or not isinstance(grid[key], Sequence):
                raise InvalidInput(f"sweep {label}: grid[{key!r}] must be a list of values")
        sets = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
        spec = SweepSpec(metric, mode, sets, "grid", None)
    else:
        assert space is not None
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise InvalidInput(f"sweep {label}: trials must be a positive number")
        rng = random.Random(seed)
        draws = {k: v if isinstance(v, Distribution) else choice(list(v)) for k, v in space.items()}
        sets = [{k: d.sample(rng) for k, d in draws.items()} for _ in range(trials)]
        spec = SweepSpec(metric, mode, sets, "random", seed)
    if not 1 <= len(spec.trials) <= MAX_TRIALS:
        raise InvalidInput(f"sweep {label}: {len(spec.trials)} trials; give 1 to {MAX_TRIALS}")
    for trial in spec.trials:
        for key in trial:
            if key in kwargs or key not in target.signature.parameters:
                raise InvalidInput(
                    f"sweep {label}: {target.name} takes no parameter {key!r} to sweep"
                )
        for key, value in trial.items():
            trial[key] = _literal(label, key, value)
    return builder.call(target, args, kwargs, sweep=spec, key=name)


# -- pipelines ------------------------------------------------------------------------------------


class Pipeline:
    """A function declared with :func:`pipeline`: calling :meth:`graph` runs it to collect
    the calls (running no step) and checks the graph."""

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.name = name
        self.signature = inspect.signature(function)
        self.__doc__ = function.__doc__

    def __repr__(self) -> str:
        return f"<pipeline {self.name}>"

    def graph(self, params: Mapping[str, Any] | None = None) -> Graph:
        params = dict(params or {})
        for key in params:
            if key not in self.signature.parameters:
                raise InvalidInput(f"pipeline {self.name} takes no parameter {key!r}")
        if _Builder.current is not None:
            raise InvalidInput("a pipeline cannot be built inside another")
        builder = _Builder()
        _Builder.current = builder
        try:
            self.function(**params)
        finally:
            _Builder.current = None
        if not builder.calls:
            raise InvalidInput(f"pipeline {self.name} calls no step")
        return Graph(self.name, builder.calls, params)


def pipeline(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Declare a pipeline: a function that calls steps (``@pipeline`` or
    ``@pipeline(name="churn")``). Its parameters can be set when it runs (``--param``)."""

    def declare(fn: Callable[..., Any]) -> Pipeline:
        label = (name or fn.__name__).replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", label):
            raise InvalidInput(f"pipeline name {label!r} must be lowercase letters, digits, - _")
        return Pipeline(fn, label)

    return declare if function is None else declare(function)


@dataclass
class Graph:
    """A checked DAG of calls: every input names a call and output that exist, no cycles."""

    name: str
    calls: dict[str, Call]
    params: dict[str, Any]
    order: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for call in self.calls.values():
            for arg, handle in list(call.inputs.items()):
                call.inputs[arg] = self._resolve(call.key, arg, handle)
            self._check_literals(call)
        self.order = self._toposort()

    def _resolve(self, key: str, arg: str, handle: Handle | Ref) -> Handle:
        target = self.calls.get(handle.call)
        if target is None:
            known = ", ".join(sorted(self.calls))
            raise InvalidInput(
                f"step {key}: input {arg} reads step {handle.call!r}, which the pipeline does "
                f"not call (calls: {known})"
            )
        resolved = Handle(target.key, target.step.outputs)
        try:
            return (
                resolved[handle.output]
                if handle.output is not None
                else resolved[resolved.selected()]
            )
        except InvalidInput as error:
            raise InvalidInput(f"step {key}: input {arg}: {error}") from None

    def _check_literals(self, call: Call) -> None:
        hints = call.step.hints()
        trials = call.sweep.trials if call.sweep else [{}]
        for trial in trials:
            for arg, value in {**call.params, **trial}.items():
                check_type(f"step {call.key}: parameter {arg}", value, hints.get(arg))
        for arg, parameter in call.step.signature.parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            given = arg in call.inputs or arg in call.params or any(arg in t for t in trials)
            if not given and parameter.default is inspect.Parameter.empty:
                raise InvalidInput(f"step {call.key}: input {arg} is not given")

    def _toposort(self) -> list[str]:
        """Calls in an order that runs each after its inputs (Kahn), or the cycle named."""
        waiting = {key: set(call.upstream()) for key, call in self.calls.items()}
        order: list[str] = []
        while waiting:
            ready = sorted(key for key, deps in waiting.items() if not deps)
            if not ready:
                raise InvalidInput(f"pipeline {self.name} has a cycle: {self._cycle(waiting)}")
            for key in ready:
                order.append(key)
                del waiting[key]
            for deps in waiting.values():
                deps.difference_update(ready)
        return order

    def _cycle(self, waiting: dict[str, set[str]]) -> str:
        start = min(waiting)
        path = [start]
        while True:
            nxt = min(dep for dep in waiting[path[-1]] if dep in waiting)
            if nxt in path:
                loop = [*path[path.index(nxt) :], nxt]
                return " -> ".join(reversed(loop))
            path.append(nxt)

    def downstream(self, key: str) -> set[str]:
        """Every call that reads ``key``'s outputs, directly or not."""
        found: set[str] = set()
        frontier = [key]
        while frontier:
            current = frontier.pop()
            for call in self.calls.values():
                if current in call.upstream() and call.key not in found:
                    found.add(call.key)
                    frontier.append(call.key)
        return found


def check_type(where: str, value: Any, hint: Any) -> None:
    """Refuse ``value`` when ``hint`` is a plain class it is not an instance of (an int for a
    float is fine; generics and unions are checked by their classes where they can be)."""
    if hint is None or hint is Any or value is None:
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if any(_matches(value, option) for option in options) or not options:
            return
    elif _matches(value, hint):
        return
    label = getattr(hint, "__name__", None) or str(hint)
    raise InvalidInput(f"{where} must be {label}, not {type(value).__name__}")


def _matches(value: Any, hint: Any) -> bool:
    cls = typing.get_origin(hint) or hint
    if not isinstance(cls, type):
        return True  # a TypeVar, Literal, Protocol or the like: not checked
    if cls is float and isinstance(value, int) and not isinstance(value, bool):
        return True
    try:
        return isinstance(value, cls)
    except TypeError:
        return True

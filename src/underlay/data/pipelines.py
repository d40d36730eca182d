"""ETL pipelines: the spec (sources -> transforms -> a table) and how it is loaded.

A pipeline is declared in YAML or in Python; both give the same :class:`Pipeline`::

    name: order_facts
    sources:
      orders: orders          # the published version, pinned when the run starts
      customers: customers@2  # or a version named here
    transforms:
      - name: joined
        sql: select o.*, c.country from orders o join customers c using (customer_id)
      - name: cleaned
        python: steps:clean   # steps.py beside this file; its input is the step before
    output:
      table: order_facts
      mode: overwrite         # append | overwrite | merge (with keys)

A ``sql`` step is one ``SELECT`` over the sources and earlier steps, by name; it is checked
when the spec is loaded (one SELECT, no schema-qualified name, only names it can see) and run
by the sandboxed DuckDB of :mod:`underlay.data.sql`. A ``python`` step names
``module:function`` (imported from the pipeline's folder) or, in Python, is the function
itself: it takes an iterator of ``pyarrow.RecordBatch`` and yields record batches (or Tables),
and may yield :class:`Reject` for rows it sets aside. Running is
:mod:`underlay.data.pipeline_runner`'s business, always on the caller's side.

Validation errors name the file, the line and the field: ``p.yaml line 7: transforms[1]:
python must be MODULE:FUNCTION``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from underlay.errors import InvalidInput

NAME = r"^[a-z][a-z0-9_]{0,62}$"
_NAME = re.compile(NAME)
_SOURCE = re.compile(r"^([a-z][a-z0-9_-]{0,62})(?:@([0-9]{1,9}))?$")
_FUNCTION = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$")

Transform = Callable[[Iterator[Any]], Any]
"""A Python step: record batches in, record batches (or Tables, or :class:`Reject`) out."""


@dataclass(frozen=True)
class Reject:
    """Rows a Python step sets aside, with the reason: counted in the run's report and written
    to the table ``<output>_rejected`` (step, reason, the row as JSON)."""

    rows: Any  # a pyarrow RecordBatch or Table
    reason: str


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class Step(_Spec):
    """One transform: ``sql`` or ``python``, exactly one."""

    name: str = Field(pattern=NAME)
    sql: str | None = None
    python: str | Transform | None = None
    input: str | None = Field(
        default=None, description="A Python step's input: a source or an earlier step."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.sql is None) == (self.python is None):
            raise ValueError("give exactly one of sql and python")
        if self.sql is not None and self.input is not None:
            raise ValueError("a sql step names its inputs in its query, not with input")
        if isinstance(self.python, str) and not _FUNCTION.fullmatch(self.python):
            raise ValueError(f"python must be MODULE:FUNCTION, not {self.python!r}")
        return self

    @property
    def kind(self) -> Literal["sql", "python"]:
        return "sql" if self.sql is not None else "python"

    def describe(self) -> dict[str, Any]:
        """The step as plain data (a function as ``module:name``): what the digest covers."""
        python = self.python
        if callable(python):
            python = f"{getattr(python, '__module__', '?')}:{getattr(python, '__qualname__', '?')}"
        plain = {"name": self.name, "sql": self.sql, "python": python, "input": self.input}
        return {k: v for k, v in plain.items() if v is not None}


class Output(_Spec):
    table: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    mode: Literal["append", "overwrite", "merge"] = "append"
    keys: list[str] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _merge_keys(self) -> Output:
        if self.mode == "merge" and not self.keys:
            raise ValueError("a merge needs keys")
        return self


class Pipeline(_Spec):
    """A pipeline's spec (see the module docstring)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    description: str = Field(default="", max_length=1000)
    sources: dict[str, str] = Field(min_length=1, max_length=64)
    transforms: list[Step] = Field(default_factory=list, max_length=256)
    output: Output

    _folder: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _names(self) -> Pipeline:
        for alias, ref in self.sources.items():
            if not _NAME.fullmatch(alias):
                raise ValueError(
                    f"source name {alias!r} must be a lowercase letter, then letters, digits "
                    "or _ (it is how the transforms name it)"
                )
            if not _SOURCE.fullmatch(ref):
                raise ValueError(f"source {alias!r}: write TABLE or TABLE@VERSION, not {ref!r}")
        if not self.transforms and len(self.sources) != 1:
            raise ValueError("with several sources, give a transform that combines them")
        known = list(self.sources)
        for index, step in enumerate(self.transforms):
            where = f"transforms[{index}] ({step.name})"
            if step.name in known:
                raise ValueError(f"{where}: the name {step.name!r} is taken already")
            if step.sql is not None:
                _check_sql(where, step.sql, known)
            elif step.input is not None and step.input not in known:
                raise ValueError(f"{where}: input {step.input!r} is no source or earlier step")
            elif step.input is None and index == 0 and len(self.sources) > 1:
                raise ValueError(f"{where}: with several sources, say which is the input")
            known.append(step.name)
        return self

    @property
    def folder(self) -> Path:
        """Where ``python: module:function`` steps are imported from."""
        return self._folder

    def with_folder(self, folder: Path) -> Pipeline:
        self._folder = folder
        return self

    def source_refs(self) -> dict[str, tuple[str, int | None]]:
        """Each source's (table, pinned version or None)."""
        refs: dict[str, tuple[str, int | None]] = {}
        for alias, ref in self.sources.items():
            match = _SOURCE.fullmatch(ref)
            assert match is not None  # validated
            refs[alias] = (match.group(1), int(match.group(2)) if match.group(2) else None)
        return refs

    def input_of(self, index: int) -> str:
        """The name a Python step at ``index`` reads."""
        step = self.transforms[index]
        if step.input is not None:
            return step.input
        return self.transforms[index - 1].name if index else next(iter(self.sources))

    def result_name(self) -> str:
        """The name whose rows are written to the output."""
        return self.transforms[-1].name if self.transforms else next(iter(self.sources))

    def digest(self) -> str:
        """SHA-256 of the spec as canonical JSON (functions by ``module:name``)."""
        plain = {
            "name": self.name,
            "sources": self.sources,
            "transforms": [step.describe() for step in self.transforms],
            "output": self.output.model_dump(),
        }
        text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _check_sql(where: str, query: str, known: list[str]) -> None:
    from underlay.data.sql import parse_select

    try:
        _, names = parse_select(query)
    except InvalidInput as error:
        raise ValueError(f"{where}: {error}") from None
    for name in names:
        if "@" in name:
            raise ValueError(
                f"{where}: {name} pins a version in the query; pin it in sources instead"
            )
        if name not in known:
            raise ValueError(
                f"{where}: the query reads {name!r}, which is no source or earlier step "
                f"(known: {', '.join(known)})"
            )


# -- loading ------------------------------------------------------------------------------------


def load(path: Path) -> Pipeline:
    """The pipeline declared in ``path``: a YAML file, or a Python file defining ``pipeline``."""
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    if path.suffix == ".py":
        return _load_python(path)
    if path.suffix not in (".yaml", ".yml"):
        raise InvalidInput(f"{path.name}: a pipeline is a .yaml, .yml or .py file")
    return _load_yaml(path)


def _load_yaml(path: Path) -> Pipeline:
    import yaml

    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise InvalidInput(f"{path.name}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InvalidInput(f"{path.name}{line}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path.name}: a pipeline is a YAML mapping (name, sources, ...)")
    lines = _lines(node) if node is not None else {}
    try:
        spec = Pipeline.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(_explain(path.name, error, lines)) from None
    return spec.with_folder(path.parent.resolve())


def _load_python(path: Path) -> Pipeline:
    import importlib.util
    import sys

    name = f"_underlay_pipeline_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidInput(f"{path.name}: cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.parent.resolve())
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except ValidationError as error:
        raise InvalidInput(_explain(path.name, error, {})) from None
    except Exception as error:  # the user's file: its failure is a clear error, not a crash
        raise InvalidInput(f"{path.name} failed to load: {type(error).__name__}: {error}") from None
    finally:
        sys.path.remove(folder)
    spec = getattr(module, "pipeline", None)
    if not isinstance(spec, Pipeline):
        raise InvalidInput(f"{path.name} defines no `pipeline = Pipeline(...)`")
    return spec.with_folder(path.parent.resolve())


def _lines(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """The line (1-based) of every mapping value and list item, by its path."""
    import yaml

    found = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found.update(_lines(value, (*path, key.value)))
            found[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.update(_lines(item, (*path, index)))
    return found


def _explain(source: str, error: ValidationError, lines: dict[tuple[Any, ...], int]) -> str:
    """The first errors on one line: ``file line N: field: what is wrong``."""
    parts = []
    for item in error.errors()[:3]:
        loc = tuple(part for part in item["loc"] if part not in ("function-after",))
        where = ".".join(str(p) for p in loc)
        where = re.sub(r"\.(\d+)", r"[\1]", where)
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        message = str(item["msg"]).removeprefix("Value error, ")
        prefix = f"{source} line {line}" if line else source
        parts.append(f"{prefix}: {where + ': ' if where else ''}{message}")
    return "; ".join(parts)


# -- the Python API -----------------------------------------------------------------------------


def sql(name: str, query: str) -> Step:
    """A SQL step: ``sql("joined", "select ... from orders join customers using (id)")``."""
    return Step(name=name, sql=query)


def python(name: str, function: Transform | str, input: str | None = None) -> Step:
    """A Python step: ``python("cleaned", clean)``, ``clean`` taking and yielding batches."""
    return Step(name=name, python=function, input=input)


def resolve_function(step: Step, folder: Path) -> Transform:
    """The function of a Python step; ``module:function`` is imported from ``folder``."""
    import importlib
    import sys

    if callable(step.python):
        return step.python
    assert isinstance(step.python, str)
    module_name, _, attribute = step.python.partition(":")
    root = str(folder)
    sys.path.insert(0, root)
    try:
        loaded = sys.modules.get(module_name)
        where = getattr(loaded, "__file__", None) or ""
        if loaded is not None and not Path(where).resolve().is_relative_to(folder):
            del sys.modules[module_name]  # another pipeline's module of the same name
        module = importlib.import_module(module_name)
    finally:
        sys.path.remove(root)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise InvalidInput(f"{step.python} is not a function")
    return function  # type: ignore[no-any-return]

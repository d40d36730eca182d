"""Find the ML pipeline a Python file declares (``@pipeline`` functions)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from underlay.data.pipelines import _explain
from underlay.errors import InvalidInput
from underlay.ml.pipelines.dsl import Pipeline


def import_file(path: Path) -> ModuleType:
    """Import ``path`` as a module, its folder on ``sys.path`` (so it can import its
    neighbours, and so pickles of classes defined beside it load in the step's job too).

    The module is named after the file (``train.py`` is ``train``) unless that name is taken
    by another module, so an object pickled by one step is found by the next."""
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file")
    if path.suffix != ".py":
        raise InvalidInput(f"{path.name}: an ML pipeline is a .py file")
    resolved = path.resolve()
    name = path.stem
    taken = sys.modules.get(name)
    if not name.isidentifier() or (
        taken is not None and Path(getattr(taken, "__file__", "") or "").resolve() != resolved
    ):
        name = f"_underlay_ml_{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"{path.name}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except InvalidInput as error:
        sys.modules.pop(name, None)
        raise InvalidInput(f"{path.name}: {error}") from None
    except ValidationError as error:  # an ETL spec in Python: said as the ETL loader says it
        sys.modules.pop(name, None)
        raise InvalidInput(_explain(path.name, error, {})) from None
    except Exception as error:  # the user's file: its failure is a clear error, not a crash
        sys.modules.pop(name, None)
        raise InvalidInput(f"{path.name} failed to load: {type(error).__name__}: {error}") from None
    return module


def find(path: Path, name: str | None = None) -> Pipeline | None:
    """The ML pipeline in ``path`` (the one named ``name`` when it declares several), or
    None when the file declares none (it may be an ETL pipeline)."""
    module = import_file(path)
    found = {v.name: v for v in vars(module).values() if isinstance(v, Pipeline)}
    if not found:
        return None
    if name is not None:
        if name not in found:
            raise InvalidInput(
                f"{path.name} declares no pipeline {name!r} "
                f"(it declares {', '.join(sorted(found))})"
            )
        return found[name]
    if len(found) > 1:
        raise InvalidInput(
            f"{path.name} declares pipelines {', '.join(sorted(found))}: name one with --pipeline"
        )
    return next(iter(found.values()))


def load(path: Path, name: str | None = None) -> Pipeline:
    """The ML pipeline in ``path``; a file that declares none is an error."""
    found = find(path, name)
    if found is None:
        raise InvalidInput(f"{path.name} declares no @pipeline function")
    return found

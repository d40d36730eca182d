"""A decision tree that leaves a mark wherever it is deserialised.

Loading a model runs code its author chose (a pickle's or a skops file's recorded types): this
tree's ``__setstate__`` stands for such code. It writes ``loaded-by-<pid>`` into the folder
it was given when fitted (best effort: a sandbox may not reach it) and prints the same on
stdout, so a test can tell which process loaded it: the evaluation job, never the server.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sklearn.tree import DecisionTreeClassifier

MARK = "marker-model: loaded by pid"


class MarkedTree(DecisionTreeClassifier):
    def __init__(self, marker_dir: str = "", max_depth: int | None = 3) -> None:
        super().__init__(max_depth=max_depth, random_state=0)
        self.marker_dir = marker_dir

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        pid = os.getpid()
        print(f"{MARK} {pid}", flush=True)
        with contextlib.suppress(OSError):
            (Path(self.marker_dir) / f"loaded-by-{pid}").write_text(os.getcwd())

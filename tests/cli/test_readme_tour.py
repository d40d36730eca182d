"""The README's five-minute tour, run as it is written: a bash script in the checkout's root.

Only the home, the port and the client configuration folder are moved (environment
variables), so the tour cannot touch the developer's own ``~/.underlay`` or port 8765. The
files the tour writes in the root (``train.csv``, ``images/``, ``philly.json``, git-ignored)
are removed afterwards; the test refuses to run over files of those names it did not make.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.cli.demo_output import assert_the_demo_ran
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def tour_script() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"## A five-minute tour\n.*?```bash\n(.*?)```", readme, re.S)
    assert match, "the README has no tour"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    made = [ROOT / "train.csv", ROOT / "images", ROOT / "philly.json"]
    assert not any(p.exists() for p in made), f"move these away first: {made}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERLAY_")}
    env |= {
        "UNDERLAY_HOME": str(tmp_path / "home"),
        "UNDERLAY_SERVER__PORT": str(port),
        "UNDERLAY_URL": f"http://127.0.0.1:{port}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TMPDIR": str(tmp_path),
    }
    script = tmp_path / "tour.sh"
    script.write_text(tour_script())
    proc = subprocess.Popen(
        ["bash", "-e", str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=900)
        philly = (ROOT / "philly.json").read_text() if (ROOT / "philly.json").exists() else ""
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server, if the tour stopped early
        for path in made:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    assert proc.returncode == 0, f"{out[-3000:]}\n---\n{err[-3000:]}"
    assert "Traceback" not in out + err
    assert_the_demo_ran(out)  # the tour's first line, `make demo`: the suite's one demo run
    assert not list(tmp_path.glob("underlay-demo-*"))  # the demo removed its temporary home
    assert "audit log OK" in out
    assert "hello" in out  # the job's log
    assert '{"total": 4}' in out  # the SQL over the ingested table: a number, not "4"
    assert "pushed images@1 (2 files" in out
    assert philly.lstrip().startswith("{")

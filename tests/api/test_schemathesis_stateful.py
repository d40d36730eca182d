"""Schemathesis's stateful phase against a live server (see ``tests/api/fuzzing.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.fuzzing import STATEFUL_EXAMPLES, fresh_token, fuzz_server
from tests.conftest import LiveServer

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from fuzz_server(tmp_path_factory)


def test_stateful_sequences_find_no_server_error_nor_undocumented_status(
    live: LiveServer, tmp_path: Path
) -> None:
    """The stateful phase: schemathesis infers links between operations (a created project's
    name into its members, blobs, jobs...) and runs sequences of calls. Its own runner (the
    CLI) drives it, so each sequence starts from what earlier ones left, as a client would."""
    token = fresh_token(live)
    report = tmp_path / "stateful.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{live.url}/api/v1/openapi.json",
            "--phases=stateful",
            "--checks=not_a_server_error,status_code_conformance",
            f"--max-examples={STATEFUL_EXAMPLES}",
            "--max-time=90",
            "--workers=1",
            "--no-shrink",
            "--seed=7",
            # a followed log streams until its job ends: not a request/response to time
            "--exclude-path-regex=/jobs/\\{[^/]+\\}/logs$",
            f"--header=Authorization: Bearer {token}",
            "--report=ndjson",
            f"--report-ndjson-path={report}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )
    out = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, out
    steps = report.read_text().count('"ScenarioFinished"')
    assert steps > 0, out  # the phase ran sequences: links were found

"""Schemathesis over every operation as someone outside the projects: a signed-in user of no
project, and no token at all (see ``tests/api/fuzzing.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from schemathesis import GenerationMode

from tests.api.fuzzing import fresh_token, fuzz, fuzz_server
from tests.conftest import LiveServer

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from fuzz_server(tmp_path_factory)


def test_no_server_errors_with_a_non_member_token(live: LiveServer) -> None:
    """A signed-in user of no project probes every route (a tenant's view of the others)."""
    failures = fuzz(live, GenerationMode.POSITIVE, lambda: fresh_token(live, "mallory"))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors_without_a_token(live: LiveServer, mode: GenerationMode) -> None:
    failures = fuzz(live, mode, lambda: None)
    assert not failures, "\n".join(failures)

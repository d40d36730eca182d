"""Schemathesis over every operation with an admin token, valid and invalid requests (see
``tests/api/fuzzing.py``)."""

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


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors_with_an_admin_token(live: LiveServer, mode: GenerationMode) -> None:
    failures = fuzz(live, mode, lambda: fresh_token(live))
    assert not failures, "\n".join(failures)

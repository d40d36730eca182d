"""What the schemathesis test modules share (``test_schemathesis*.py``): their live server,
fresh tokens and the checks.

Property-based fuzzing of the served OpenAPI spec: no input may produce a 5xx, nor a status
code the spec does not document, in the positive, negative and stateful phases.

Schemathesis reads ``/api/v1/openapi.json`` from a live server and, for every operation,
generates valid and invalid requests (positive and negative modes). Each response must be
below 500, carry a status code the operation documents, and every 4xx must be an RFC 9457
problem. The server is
module-scoped on SQLite (one per test module, so that the modules run on different test
workers) and the example counts are bounded. Operations are driven
through ``APIOperation.as_strategy`` and Hypothesis directly: schemathesis's own pytest
integration needs the schema at collection time (or its lazy loader, which does not run
under pytest 9), and the server only exists once fixtures have run.

Authenticated cases each get a fresh admin token, minted in the server's own database: a
fuzzed ``DELETE /tokens/{id}`` may revoke any earlier token, and the run must keep probing the
authenticated surface after that.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import ADMIN_TOKEN, LiveServer
from underlay import identity
from underlay.config import Settings, ensure_home
from underlay.store import Scope

# A budget of examples per run, shared by the operations: every operation is fuzzed, and the
# run takes about as long whether the API has 60 operations or 150 (40 each at 60).
EXAMPLE_BUDGET = 2400
MIN_EXAMPLES = 12
STATEFUL_EXAMPLES = 40
# uvicorn answers a request it cannot parse (e.g. a control character in a negative-mode
# header) itself, before the app sees it; that 400 is plain text by design of the server.
UVICORN_REFUSAL = "Invalid HTTP request received."


def import_schemathesis_whole() -> None:
    """Import every schemathesis module now, while the test session has one thread.

    schemathesis is a pytest plugin, so pytest rewrites (compiles) each of its modules when it
    is first imported, and it imports most of them lazily, in the middle of a run, while a live
    server's threads run beside it. CPython 3.11 keeps the AST builder's recursion counter per
    interpreter, not per thread: two threads compiling at once can trip
    ``SystemError: AST constructor recursion depth mismatch`` (a race later CPython releases
    fixed), which failed two schemathesis tests in a CI run here.
    """
    for module in pkgutil.walk_packages(schemathesis.__path__, "schemathesis."):
        try:
            importlib.import_module(module.name)
        except ImportError:  # an optional integration whose library is not installed
            continue


import_schemathesis_whole()


def fuzz_settings(operations: int) -> settings:
    return settings(
        max_examples=max(MIN_EXAMPLES, EXAMPLE_BUDGET // operations),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure as is
    )


def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Each test module's ``live`` fixture (module-scoped) yields from this."""
    home: Path = tmp_path_factory.mktemp("fuzz") / "home"
    s = Settings(home=home, store={"url": f"sqlite:///{home.parent / 'underlay.db'}"})
    ensure_home(s)
    s.admin_token = ADMIN_TOKEN
    server = LiveServer(s).start()
    with server.client() as admin:  # something to find: a project, a member, a blob, an edge
        admin.create_project("vision")
        admin.create_user("alice", password="correct horse battery")
        admin.add_member("vision", "alice", "member")
        admin.create_user("mallory", password="correct horse battery")  # in no project
        blob = admin.upload_blob("vision", b"fuzz me")
        admin.add_lineage("vision", ("blob", blob.digest), "input_of", ("run", "r1"))
        files = home.parent / "dataset"
        files.mkdir()
        (files / "a.txt").write_bytes(b"fuzz me")
        admin.push_dataset("vision", "ds", files)
    try:
        yield server
    finally:
        server.stop()


def fresh_token(live: LiveServer, user: str = "admin") -> str:
    with live.platform.db.session(Scope.everything()) as session:
        found = identity.read_user(session, user)
        _, secret = identity.create_token(session, found, "fuzz", expires_in_days=1)
    return secret


def documented_statuses(live: LiveServer) -> dict[tuple[str, str], set[str]]:
    """(METHOD, path template) -> the status codes the served spec documents."""
    spec = httpx.get(f"{live.url}/api/v1/openapi.json", timeout=120).json()
    return {
        (method.upper(), path): set(op["responses"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }


def check_response(case: schemathesis.Case, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    validate(case, case.call(headers=headers, timeout=30))


def validate(case: schemathesis.Case, response: Any) -> None:
    described = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}"
    assert response.status_code < 500, described
    documented = DOCUMENTED[(case.method.upper(), case.operation.path)]
    assert str(response.status_code) in documented, f"undocumented status: {described}"
    if response.text == UVICORN_REFUSAL:
        assert response.status_code == 400, described
    elif response.status_code >= 400:
        assert response.headers["content-type"] == ["application/problem+json"], described
        body = response.json()
        assert body["status"] == response.status_code, described
        assert body["request_id"] == response.headers["x-request-id"][0], described


DOCUMENTED: dict[tuple[str, str], set[str]] = {}


def fuzz(live: LiveServer, mode: GenerationMode, token: Callable[[], str | None]) -> list[str]:
    """Run every operation of the served spec; returns one line per operation that failed."""
    # first over httpx with a generous timeout: the server builds the document once, on the
    # first request (seconds on a loaded machine), and schemathesis' own fetch then finds it
    DOCUMENTED.update(documented_statuses(live))
    api = schemathesis.openapi.from_url(f"{live.url}/api/v1/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 15, [op.label for op in operations]
    budget = fuzz_settings(len(operations))
    for operation in operations:

        @budget
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            check_response(case, token())

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid: the operation takes no input
            continue
        except AssertionError as exc:
            failures.append(f"{operation.label}: {exc}")
    return failures

"""``underlay tables checks`` / ``tables check`` / ``ingest --checks`` as a user runs them:
child processes against a live server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from tests.conftest import sqlite_url

pytestmark = pytest.mark.slow  # each test drives several CLI processes


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI: the backends are covered by the API tests."""
    return sqlite_url(sqlite_template, tmp_path)


CHECKS = """\
checks:
  - type: not_null
    column: id
  - type: unique
    columns: [id]
  - type: allowed
    column: country
    values: [DE, FR]
  - type: range
    column: spend
    min: 0
    blocking: false
"""


def test_a_gate_fails_then_passes(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    checks = tmp_path / "checks.yaml"
    checks.write_text(CHECKS)
    first = tmp_path / "first.csv"
    first.write_text("id,country,spend\n1,DE,10\n2,FR,20\n")
    created = as_json(
        cli("tables", "ingest", "c", str(first), "-p", "shop", "--checks", str(checks), "--json")
    )
    assert created["published"] is True and created["quality"]["passed"] is True

    bad = tmp_path / "bad.csv"
    bad.write_text("id,country,spend\n3,XX,5\n,DE,6\n4,FR,-1\n")
    refused = cli("tables", "ingest", "c", str(bad), "-p", "shop", ok=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    out = refused.stdout
    assert "c@1 rejected: 2 blocking quality check(s) failed" in out
    assert "FAIL  not_null:id: 1 of 5 rows have a null in id" in out
    assert "FAIL  allowed:country: 1 of 5 rows have country not in ['DE', 'FR']" in out
    assert '{"id": 3, "country": "XX", "spend": 5}' in out
    assert "WARN  range:spend: 1 of 5 rows have spend outside >= 0" in out
    as_data = cli("tables", "ingest", "c", str(bad), "-p", "shop", "--json", ok=False)
    report = as_json(as_data)
    assert as_data.returncode == 1
    assert (report["version"], report["published"]) == (3, False)
    assert report["quality"]["failed"] == ["not_null:id", "allowed:country"]

    rows = cli("sql", "select count(*) as n from c", "-p", "shop").stdout
    assert json.loads(rows) == {"n": 2}  # readers stay on c@0
    read = cli("tables", "head", "c@1", "-p", "shop", ok=False)
    assert_one_line_error(read, "c@1 failed its quality checks and was never published")
    versions = as_json(cli("tables", "versions", "c", "-p", "shop", "--json"))
    assert [(v["version"], v["status"]) for v in versions] == [
        (3, "rejected"),
        (1, "rejected"),
        (0, "published"),
    ]

    good = tmp_path / "good.csv"
    good.write_text("id,country,spend\n3,DE,5\n4,FR,7\n")
    passed = cli("tables", "ingest", "c", str(good), "-p", "shop")
    assert passed.stdout.startswith("c@"), passed.stdout
    assert "4 in the table" in passed.stdout


def test_checks_set_show_check_and_rm(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    data = tmp_path / "c.csv"
    data.write_text("id,country,spend\n1,DE,10\n1,FR,20\n")
    cli("tables", "ingest", "c", str(data), "-p", "shop")
    checks = tmp_path / "checks.json"
    checks.write_text(json.dumps([{"type": "unique", "column": "id", "name": "one_row_per_id"}]))
    done = cli("tables", "checks", "set", "c", str(checks), "-p", "shop")
    assert done.stdout.strip() == "c: 1 check(s) gate every new version"
    shown = cli("tables", "checks", "show", "c", "-p", "shop").stdout
    assert shown.strip() == 'one_row_per_id (unique, blocking): {"columns": ["id"]}'
    checked = cli("tables", "check", "c", "-p", "shop", ok=False)
    assert checked.returncode == 1
    assert checked.stdout.startswith("c@0 fails its quality checks")
    assert "FAIL  one_row_per_id: 2 rows share 1 duplicated value(s) of id" in checked.stdout
    as_data = as_json(cli("tables", "check", "c@0", "-p", "shop", "--json", ok=False))
    assert as_data["report"]["failed"] == ["one_row_per_id"]
    other = tmp_path / "try.yaml"
    other.write_text("- {type: row_count, max: 5}\n")
    tried = cli("tables", "check", "c", "-p", "shop", "--checks", str(other))
    assert "c@0 passes its quality checks" in tried.stdout
    assert "ok    row_count: 2 rows (<= 5)" in tried.stdout
    cli("tables", "checks", "rm", "c", "-p", "shop")
    assert "c has no quality checks" in cli("tables", "checks", "show", "c", "-p", "shop").stdout


def test_bad_declarations_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "shop")
    data = tmp_path / "c.csv"
    data.write_text("id,country\n1,DE\n")
    cli("tables", "ingest", "c", str(data), "-p", "shop")
    missing = tmp_path / "missing.yaml"
    missing.write_text("- type: not_null\n  column: nope\n")
    refused = cli("tables", "checks", "set", "c", str(missing), "-p", "shop", ok=False)
    assert_one_line_error(refused, "names column(s) 'nope' that the table does not have")
    regex = tmp_path / "regex.yaml"
    regex.write_text("- {type: regex, column: country, pattern: '[A-'}\n")
    refused = cli("tables", "checks", "set", "c", str(regex), "-p", "shop", ok=False)
    assert_one_line_error(refused, "bad regex")
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("checks: [type: {\n")
    refused = cli("tables", "checks", "set", "c", str(garbage), "-p", "shop", ok=False)
    assert_one_line_error(refused, "is no YAML or JSON")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("- {type: not_null, column: id, severity: high}\n")
    refused = cli("tables", "checks", "set", "c", str(unknown), "-p", "shop", ok=False)
    assert_one_line_error(refused, "the checks are not valid", "severity")
    fresh = cli(
        "tables", "ingest", "new", str(data), "-p", "shop", "--checks", str(missing), ok=False
    )
    assert_one_line_error(fresh, "'nope' that the table does not have")
    names = [t["name"] for t in as_json(cli("tables", "ls", "-p", "shop", "--json"))]
    assert names == ["c"]  # nothing stored for the refused new table

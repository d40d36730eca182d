"""``underlay datasets`` as a user runs it: child processes against a live server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import Cli, as_json, assert_one_line_error
from tests.conftest import sqlite_url


@pytest.fixture
def database_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only for the CLI: the backends are covered by the API tests."""
    return sqlite_url(sqlite_template, tmp_path)


def test_push_versions_diff_show_pull(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "img" / "1.png").write_bytes(b"\x89PNG one")
    first = cli("datasets", "push", "images", str(src), "-p", "vision", "-m", "first")
    assert first.stdout.strip() == "pushed images@1 (2 files, 13 B)"
    (src / "a.txt").write_text("alpha, edited")
    (src / "b.txt").write_text("new")
    second = as_json(cli("datasets", "push", "images", str(src), "-p", "vision", "--json"))
    assert (second["version"], second["file_count"], second["created"]) == (2, 3, True)
    same = cli("datasets", "push", "images", str(src), "-p", "vision")
    assert same.stdout.strip().startswith("unchanged: images@2")

    versions = as_json(cli("datasets", "versions", "images", "-p", "vision", "--json"))
    assert [v["version"] for v in versions] == [2, 1]
    diff = cli("datasets", "diff", "images@1", "images@2", "-p", "vision")
    assert diff.stdout.splitlines() == ["~ a.txt", "+ b.txt"]
    assert "1 added, 0 removed, 1 changed" in diff.stderr
    short = as_json(cli("datasets", "diff", "images@1", "2", "-p", "vision", "--json"))
    assert [f["path"] for f in short["added"]] == ["b.txt"]
    shown = as_json(cli("datasets", "show", "images@1", "-p", "vision", "--json"))
    assert [f["path"] for f in shown] == ["a.txt", "img/1.png"]
    listed = as_json(cli("datasets", "ls", "-p", "vision", "--json"))
    assert [(d["name"], d["latest_version"]) for d in listed] == [("images", 2)]

    out = tmp_path / "out"
    pulled = cli("datasets", "pull", "images@1", str(out), "-p", "vision")
    assert "pulled images@1" in pulled.stdout
    assert (out / "a.txt").read_text() == "alpha"
    assert (out / "img" / "1.png").read_bytes() == b"\x89PNG one"
    assert not (out / "b.txt").exists()


def test_bad_references_and_missing_things_are_one_line_errors(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    bad = cli("datasets", "pull", "images@two", str(tmp_path / "o"), "-p", "vision", ok=False)
    assert_one_line_error(bad, "not a dataset reference")
    missing = cli("datasets", "versions", "nothing", "-p", "vision", ok=False)
    assert_one_line_error(missing, "dataset 'nothing' not found")
    other = cli("datasets", "diff", "a@1", "b@2", "-p", "vision", ok=False)
    assert_one_line_error(other, "compare two versions of one dataset")
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    bad_name = cli("datasets", "push", "Bad Name", str(folder), "-p", "vision", ok=False)
    assert_one_line_error(bad_name, "dataset name")


def test_rm_deletes_the_dataset(cli: Cli, tmp_path: Path) -> None:
    cli("projects", "create", "vision")
    src = tmp_path / "src"
    src.mkdir()
    (src / "k").write_text("v")
    cli("datasets", "push", "d", str(src), "-p", "vision")
    cli("datasets", "rm", "d", "-p", "vision", "--yes")
    assert as_json(cli("datasets", "ls", "-p", "vision", "--json")) == []

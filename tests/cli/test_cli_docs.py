"""docs/cli.md is generated from the Typer app and must match it (checked here, so in CI)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
import typer.main

from underlay.cli.main import app

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gen_cli_docs.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_reference_is_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr


def test_every_command_has_a_section() -> None:
    doc = (SCRIPT.parent.parent / "docs" / "cli.md").read_text()
    gen = _generator()
    paths = [" ".join(p) for p, _ in gen.walk(typer.main.get_command(app), ("underlay",))]
    assert len(paths) > 40
    for path in paths:
        assert f"\n## {path}\n" in doc, path


def test_sections_show_usage_arguments_options_and_help() -> None:
    tiny = typer.Typer()

    @tiny.command()
    def copy(
        source: Annotated[str, typer.Argument(help="What to copy.")],
        times: Annotated[int, typer.Option("--times", "-n", help="How often.")] = 2,
        quiet: Annotated[bool, typer.Option("--quiet", help="Say nothing.")] = False,
    ) -> None:
        """Copy a thing | safely."""

    @tiny.command()
    def other() -> None:
        """Another."""

    text = _generator().render(tiny)
    assert "## underlay copy\n" in text and "## underlay other\n" in text
    assert "underlay copy [OPTIONS] SOURCE" in text
    assert "Copy a thing | safely." in text
    assert "| `SOURCE` | str, required |  | What to copy. |" in text
    assert "| `--times`, `-n` | int | 2 | How often. |" in text
    assert "| `--quiet` | flag |  | Say nothing. |" in text

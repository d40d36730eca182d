"""Fixtures of the ml tests: the CLI fixtures of tests/cli."""

from __future__ import annotations

from tests.cli.test_cli import cli, cli_home  # noqa: F401  - fixtures

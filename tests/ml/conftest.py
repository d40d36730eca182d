"""Fixtures of the ML tests: the CLI runner as the other CLI tests use it."""

from __future__ import annotations

from tests.cli.test_cli import cli, cli_home  # noqa: F401  - fixtures

"""The CLI tests of the data domain run the ``underlay`` command as tests/cli does."""

from tests.cli.test_cli import cli, cli_home  # noqa: F401  - fixtures

"""Progress on long CLI work: bars on stderr only, never on stdout, never off a terminal.

A bar is forced with ``FORCE_COLOR=1`` (the child's stderr is a pipe here); without it,
a pipe gets no bar at all, and ``--quiet`` silences even a forced one.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.test_cli import Cli, cli, cli_home, database_url  # noqa: F401

BAR = "MB"  # Rich's DownloadColumn shows "1.2/3.1 MB"


def _forced(server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "UNDERLAY_URL": server.url,
        "UNDERLAY_TOKEN": server.admin_token,
        "FORCE_COLOR": "1",
    }


def test_blobs_put_and_get_draw_a_bar_on_stderr_only(server, cli: Cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cli("projects", "create", "vision")
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    put = cli("blobs", "put", str(source), "-p", "vision", env=_forced(server))
    digest = put.stdout.strip()
    assert put.stdout == f"{digest}\n" and len(digest) == 64
    assert "put weights.bin" in put.stderr and BAR in put.stderr and "100%" not in put.stdout
    out = tmp_path / "copy.bin"
    got = cli("blobs", "get", digest, "-o", str(out), "-p", "vision", env=_forced(server))
    assert got.stdout == f"wrote {out}\n" and out.read_bytes() == source.read_bytes()
    assert f"get {digest[:12]}" in got.stderr and BAR in got.stderr


def test_no_bar_in_a_pipe_or_with_quiet(server, cli: Cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cli("projects", "create", "vision")
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(1024 * 1024))
    piped = cli("blobs", "put", str(source), "-p", "vision")
    assert piped.stderr == "" and len(piped.stdout.strip()) == 64
    quiet = cli("blobs", "put", str(source), "-p", "vision", "--quiet", env=_forced(server))
    assert quiet.stderr == "" and quiet.stdout == piped.stdout

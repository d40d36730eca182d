"""Settings, the home folder and start-up migrations."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from alembic import command
from pydantic import ValidationError
from sqlalchemy import inspect

from underlay import identity
from underlay.config import Settings, ensure_home
from underlay.platform import Platform
from underlay.store import Database, Scope


def test_env_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNDERLAY_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("UNDERLAY_STORE__URL", "postgresql+psycopg://u@db/x")
    monkeypatch.setenv("UNDERLAY_SERVER__PORT", "9999")
    s = Settings()
    assert s.home == tmp_path / "h"
    assert s.database_url == "postgresql+psycopg://u@db/x"
    assert s.server.port == 9999
    assert s.blob_url == str(tmp_path / "h" / "blobs")


def test_underlay_executor_is_a_shorthand_for_the_compute_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().compute.executor == "local"
    monkeypatch.setenv("UNDERLAY_COMPUTE__EXECUTOR", "ray")
    assert Settings().compute.executor == "ray"
    monkeypatch.setenv("UNDERLAY_COMPUTE__EXECUTOR", "local")
    monkeypatch.setenv("UNDERLAY_EXECUTOR", "ray")
    assert Settings().compute.executor == "ray"
    monkeypatch.setenv("UNDERLAY_EXECUTOR", "slurm")
    with pytest.raises(ValidationError, match="executor"):
        Settings()


def test_defaults_live_in_the_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'underlay.db'}"


def test_invalid_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDERLAY_SERVER__PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_home_and_master_key_are_private(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "home")
    ensure_home(s)
    key = s.master_key_path.read_bytes()
    assert len(key) == 32
    assert stat.S_IMODE(s.master_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(s.home.stat().st_mode) == 0o700
    ensure_home(s)  # a second start keeps the key
    assert s.master_key_path.read_bytes() == key


def test_start_applies_pending_migrations(settings: Settings) -> None:
    """A database left at an older revision is upgraded when the platform starts."""
    db = Database(settings.database_url)
    db.migrate(lock_dir=settings.home)
    command.downgrade(db.alembic_config(), "base")
    assert "users" not in inspect(db.engine).get_table_names()
    db.dispose()
    platform = Platform(settings)
    try:
        platform.start()
        assert platform.db.current_revision() == platform.db.head_revision()
        assert "users" in inspect(platform.db.engine).get_table_names()
    finally:
        platform.close()


def test_first_start_creates_admin_once(settings: Settings) -> None:
    platform = Platform(settings)
    try:
        secret = platform.start()
        assert secret is not None and secret.startswith("ul_")
        assert platform.start() is None  # never shown again
    finally:
        platform.close()


def test_an_existing_readable_home_is_made_private_with_all_it_holds(settings: Settings) -> None:
    """An older version (or a hand-made folder) left the home 0755 and files 0644: a server
    start tightens them, and everything it creates (database, journal, logs, blobs) is private."""
    home = settings.home
    if settings.database_url.startswith("sqlite:///"):  # the server must create it here
        Path(settings.database_url.removeprefix("sqlite:///")).unlink()
    home.chmod(0o755)
    (home / "logs").mkdir(mode=0o755)
    (home / "notes.txt").write_text("left by hand")
    (home / "notes.txt").chmod(0o644)
    platform = Platform(settings)
    try:
        platform.start()
        with platform.db.session(Scope.everything()) as session:
            project = identity.create_project(session, "modes", identity.SYSTEM)
            project_id = project.id
        with platform.db.session(Scope.everything()) as session:
            platform.blobs.put(session, project_id, b"private bytes")
        made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in home.iterdir()}
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert {n: m for n, m in made.items() if m & 0o077} == {}, made
        assert {"logs", "notes.txt", "master.key", "signing.key"} <= set(made)
        if settings.database_url.startswith("sqlite:///"):  # the database and its journal
            db_file = Path(settings.database_url.removeprefix("sqlite:///"))
            for path in db_file.parent.glob(db_file.name + "*"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        blob_files = [p for p in (home / "blobs").rglob("*") if p.is_file()]
        assert blob_files and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in blob_files)
    finally:
        platform.close()

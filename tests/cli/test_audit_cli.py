"""``underlay audit verify --local`` as a child process on a store someone tampered with."""

from __future__ import annotations

from tests.cli.conftest import clean_env, run_cli
from tests.test_audit import _fill, _rewind
from underlay.config import Settings
from underlay.platform import Platform
from underlay.store import Database


def test_verify_local_exits_non_zero_on_a_truncated_log(db: Database, settings: Settings) -> None:
    env = clean_env(
        UNDERLAY_HOME=str(settings.home),
        UNDERLAY_STORE__URL=settings.database_url,
        UNDERLAY_SECURITY__AUDIT_CHECKPOINT_EVERY="3",
    )
    platform = Platform(
        Settings(
            home=settings.home,
            store={"url": settings.database_url},
            security={"audit_checkpoint_every": 3},
        )
    )
    try:
        _fill(platform.audit, 10)
    finally:
        platform.close()
    verified = run_cli("audit", "verify", "--local", env=env)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("audit log OK: 10 entries")

    _rewind(db, 4)  # entries and checkpoints after 4 deleted, the head rewound
    failed = run_cli("audit", "verify", "--local", env=env)
    assert failed.returncode == 1, failed.stdout
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("audit log FAILED verification: the audit log ends at entry 4")
    assert "covers entry 9: entries after 4 were deleted" in lines[0]

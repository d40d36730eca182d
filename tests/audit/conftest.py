"""The audit tests' signing keys and log."""

from __future__ import annotations

from pathlib import Path

import pytest

from underlay.audit import AuditLog
from underlay.config import Settings
from underlay.crypto import SigningKey
from underlay.store import Database


@pytest.fixture
def signer(settings: Settings) -> SigningKey:
    return SigningKey(settings)


@pytest.fixture
def forger(tmp_path: Path) -> SigningKey:
    """Another Ed25519 key that claims to be the platform's."""
    return SigningKey(Settings(home=tmp_path / "forger"))


@pytest.fixture
def log(db: Database, signer: SigningKey) -> AuditLog:
    return AuditLog(db, signer, checkpoint_every=3)

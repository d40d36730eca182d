"""Settings: one typed, nested object read once at start-up and passed down.

Every field has a description and a safe default. Environment names derive from the path with
the ``UNDERLAY_`` prefix and ``__`` between levels (``UNDERLAY_STORE__URL``). Nothing else in
the package reads the environment. The home folder holds the SQLite file, the blob folder and
the key files; :func:`ensure_home` creates it with private permissions.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path("~/.underlay").expanduser()


class StoreSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database; default sqlite in the home folder. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    pool_size: int = Field(
        default=5, ge=1, description="Connections kept per process (PostgreSQL)."
    )
    busy_timeout_s: float = Field(
        default=30.0, gt=0, description="How long SQLite waits for another writer's lock."
    )


class BlobSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="Where blobs live: a local folder (default home/blobs) or any fsspec URL "
        "(s3://bucket/prefix).",
    )
    chunk_size: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Plaintext bytes per encrypted chunk; bounds memory per stream.",
    )
    max_size: int = Field(
        default=64 * 1024**3, gt=0, description="Largest blob accepted, in bytes (default 64 GiB)."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra fsspec options (endpoint_url, key, secret, ...) for remote blob URLs.",
    )


class ServerSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Address `underlay up` binds.")
    port: int = Field(default=8765, ge=0, le=65535, description="Port `underlay up` binds.")
    max_json_body: int = Field(
        default=1024 * 1024, gt=0, description="Largest JSON request body, in bytes."
    )
    token_ttl_days: int = Field(
        default=90, ge=1, le=3650, description="Default lifetime of new API tokens."
    )


class SecuritySettings(BaseModel):
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed logins per user or per address before lock-out."
    )
    login_window_s: int = Field(
        default=300, ge=1, description="Window over which failed logins are counted."
    )
    audit_checkpoint_every: int = Field(
        default=100, ge=1, description="Sign an audit checkpoint every this many entries."
    )


class Settings(BaseSettings):
    """All of underlay's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="UNDERLAY_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home, description="Folder for local state.")
    admin_token: str | None = Field(
        default=None,
        description="Token for the first admin on first start; otherwise one is generated and "
        "printed once.",
        repr=False,
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")
    log_level: str = Field(default="INFO", description="Logging level.")
    store: StoreSettings = Field(default_factory=StoreSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)

    @property
    def database_url(self) -> str:
        return self.store.url or f"sqlite:///{self.home / 'underlay.db'}"

    @property
    def blob_url(self) -> str:
        return self.blobs.url or str(self.home / "blobs")

    @property
    def master_key_path(self) -> Path:
        return self.home / "master.key"

    @property
    def signing_key_path(self) -> Path:
        return self.home / "signing.key"


def ensure_home(settings: Settings) -> None:
    """Create the home folder (mode 0700) and its key files (mode 0600) if missing."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret_file(settings.master_key_path, secrets.token_bytes(32), overwrite=False)


def write_secret_file(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Write ``data`` to ``path`` readable by the owner only; atomic; returns True if written."""
    if path.exists() and not overwrite:
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if overwrite:
        tmp.replace(path)
        return True
    try:
        os.link(tmp, path)  # fails if another process created it first
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True

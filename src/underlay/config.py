"""Settings: one typed, nested object read once at start-up and passed down.

Every field has a description and a safe default. Environment names derive from the path with
the ``UNDERLAY_`` prefix and ``__`` between levels (``UNDERLAY_STORE__URL``). Nothing else in
the package reads the environment. The home folder holds the SQLite file, the blob folder and
the key files; :func:`ensure_home` creates it with private permissions.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from underlay.compute.settings import AutoscalerSettings as AutoscalerSettings
from underlay.compute.settings import ComputeSettings as ComputeSettings
from underlay.compute.settings import NodeGroupSettings as NodeGroupSettings
from underlay.compute.settings import SimulatedAccelerator as SimulatedAccelerator


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


class DataSettings(BaseModel):
    tables_url: str | None = Field(
        default=None,
        description="Where Delta tables live: a local folder (default home/tables) or an object "
        "store URL (s3://bucket/prefix).",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="delta-rs storage options for a remote tables URL (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP, ...).",
    )
    sql_memory_limit: str = Field(
        default="1GB",
        pattern=r"^[0-9]+(\.[0-9]+)?\s*[KMGT]?i?B$",
        description="DuckDB memory limit of SQL queries: one DuckDB database per process runs "
        "them all, so the limit caps all queries of one server process together (a query "
        "that would go past it fails).",
    )
    sql_threads: int = Field(
        default=2, ge=1, le=64, description="DuckDB threads, shared by the queries of a process."
    )
    sql_timeout_s: float = Field(
        default=300.0, gt=0, le=86400, description="A SQL query running longer is interrupted."
    )
    batch_rows: int = Field(
        default=65536, ge=1024, le=10_000_000, description="Rows per batch when ingesting."
    )
    pipeline_run_lease_s: float = Field(
        default=60.0,
        ge=1.0,
        le=86_400.0,
        description="How long a pipeline run stays `running` without its runner renewing its "
        "lease (runners renew every quarter of it); past that the run is recorded as failed.",
    )


class ServerSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Address `underlay up` binds.")
    port: int = Field(default=8765, ge=0, le=65535, description="Port `underlay up` binds.")
    public_url: str | None = Field(
        default=None, description="URL jobs and agents use to reach the server, if not host:port."
    )
    tls: bool = Field(default=False, description="Set by `underlay up --tls-cert`.")
    max_json_body: int = Field(
        default=1024 * 1024, gt=0, description="Largest JSON request body, in bytes."
    )
    token_ttl_days: int = Field(
        default=90, ge=1, le=3650, description="Default lifetime of new API tokens."
    )
    # -- HTTP hardening: slow or malformed clients cannot hold the server -----------------
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For/-Proto headers are "
        "believed (JSON list of IPs or networks, or ['*']). Empty: none, not even 127.0.0.1.",
    )
    max_concurrent_uploads: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Blob uploads one server process receives at once; more get 429 with "
        "Retry-After.",
    )
    body_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest wait for the next piece of a request body; then 408 and the "
        "upload is discarded.",
    )
    header_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a complete request head this long after "
        "opening (or after its previous response) is closed.",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, le=3600, description="An idle keep-alive connection is closed after this."
    )
    max_header_count: int = Field(
        default=100, ge=10, le=10000, description="Most header fields a request may carry (431)."
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request head (request line and headers), in bytes (431).",
    )
    http: Literal["auto", "httptools", "h11"] = Field(
        default="auto",
        description="The HTTP/1.1 parser: httptools (C, about half h11's CPU per request), "
        "h11 (pure Python), or auto: httptools when installed. Both are hardened alike.",
    )
    auth_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long the prediction routes trust a token they authenticated (and "
        "its right to read a project) before asking the database again: a revoked token, a "
        "deactivated user or a removed membership keeps working at most this long; an "
        "expiring token is not trusted past its expiry. 0 checks every request.",
    )


class SecuritySettings(BaseModel):
    login_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed logins of one user from one address before that pair backs off.",
    )
    login_window_s: int = Field(
        default=3600, ge=1, le=86400, description="Window over which failed logins are counted."
    )
    login_backoff_s: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="First back-off of a (user, address) pair at the limit; doubles with each "
        "further failure.",
    )
    login_backoff_max_s: int = Field(
        default=900, ge=1, le=86400, description="Longest back-off of a (user, address) pair."
    )
    project_creation: Literal["admins", "creators", "anyone"] = Field(
        default="creators",
        description="Who may create projects: global admins only ('admins'), also users a "
        "global admin granted 'project-creator' ('creators'), or every user ('anyone').",
    )
    login_max_failures_per_address: int = Field(
        default=50,
        ge=1,
        le=100000,
        description="Failed logins from one address, for any users, before it is refused "
        "for the rest of the window (password spraying).",
    )
    audit_checkpoint_every: int = Field(
        default=100, ge=1, description="Sign an audit checkpoint every this many entries."
    )
    audit_checkpoint_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Also sign an audit checkpoint this often (seconds) when there are new "
        "entries, so the unsigned tail of the log is never older than this.",
    )
    audit_checkpoint_url: str | None = Field(
        default=None,
        description="A second place, outside this machine, for the signed audit checkpoints: "
        "an fsspec URL prefix (s3://bucket/audit/), one object per checkpoint. They always go "
        "to audit-checkpoints.jsonl in the home as well.",
    )
    audit_checkpoint_storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra fsspec options (endpoint_url, key, secret, ...) for "
        "audit_checkpoint_url.",
        repr=False,
    )


class AlertSettings(BaseModel):
    delivery_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between looks for webhook deliveries due."
    )
    retry_base_s: float = Field(
        default=2.0, gt=0, le=3600, description="Wait before a failed delivery's first retry; "
        "each further retry waits twice as long."
    )  # fmt: skip
    retry_max_s: float = Field(
        default=600.0, gt=0, le=86400, description="Longest wait between two delivery attempts."
    )
    max_attempts: int = Field(
        default=50, ge=1, le=1000, description="Attempts before a delivery is given up (failed)."
    )
    delivery_timeout_s: float = Field(
        default=5.0, gt=0, le=120, description="Time a webhook receiver has to answer."
    )
    webhook_denied_networks: list[str] = Field(
        default_factory=lambda: [
            "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32",
            "0.0.0.0/8", "::/128",
        ],
        description="Networks (CIDR) no webhook may post into: by default the link-local "
        "ranges that hold the clouds' metadata services. Add private ranges to close them.",
    )  # fmt: skip
    anomaly_interval_s: float = Field(
        default=300.0, ge=0, le=86400,
        description="Seconds between anomaly scans of the platform itself (0: none).",
    )  # fmt: skip
    anomaly_z: float = Field(
        default=6.0, gt=0, le=100,
        description="Robust z-score (median/MAD) above which a platform figure is an anomaly.",
    )  # fmt: skip

    @field_validator("webhook_denied_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for text in value:
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{text[:60]!r} is not a network in CIDR form") from None
        return value


class UiSettings(BaseModel):
    session_ttl_s: int = Field(
        default=8 * 3600,
        ge=60,
        le=30 * 86400,
        description="Lifetime of a dashboard sign-in session, in seconds; then sign in again.",
    )
    sample_interval_s: float = Field(
        default=15.0,
        ge=0.1,
        le=3600,
        description="Seconds between the samples of fleet utilisation, power and queue depth "
        "that the overview charts (the last 24 h are kept in memory).",
    )


class Settings(BaseSettings):
    """All of underlay's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="UNDERLAY_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home, description="Folder for local state.")
    admin_token: str | None = Field(
        default=None,
        description="Token for the first admin on first start; otherwise one is generated, "
        "printed once and written to admin.token (0600) in the home.",
        repr=False,
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")
    log_level: str = Field(default="INFO", description="Logging level.")
    store: StoreSettings = Field(default_factory=StoreSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    executor: Literal["local", "ray"] | None = Field(
        default=None,
        description="Shorthand for compute.executor (UNDERLAY_EXECUTOR=ray); wins over it.",
    )

    @model_validator(mode="after")
    def _executor_shorthand(self) -> Settings:
        if self.executor is not None:
            self.compute.executor = self.executor
        return self

    @property
    def database_url(self) -> str:
        return self.store.url or f"sqlite:///{self.home / 'underlay.db'}"

    @property
    def blob_url(self) -> str:
        return self.blobs.url or str(self.home / "blobs")

    @property
    def tables_url(self) -> str:
        return self.data.tables_url or str(self.home / "tables")

    @property
    def master_key_path(self) -> Path:
        return self.home / "master.key"

    @property
    def signing_key_path(self) -> Path:
        return self.home / "signing.key"

    @property
    def admin_token_path(self) -> Path:
        """The generated first admin token (and each one ``admin reset-token`` makes)."""
        return self.home / "admin.token"

    @property
    def audit_checkpoint_path(self) -> Path:
        return self.home / "audit-checkpoints.jsonl"


def ensure_home(settings: Settings) -> None:
    """Create the home folder and its key files if missing, and keep the home and everything
    directly in it owner-only (folders 0700, files 0600), also when they already existed or
    an older version made them readable to others."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    restrict(home)
    write_secret_file(settings.master_key_path, secrets.token_bytes(32), overwrite=False)


def restrict(home: Path) -> None:
    """Owner-only modes on ``home`` and its direct entries (symbolic links are left alone).
    What lies deeper is unreachable to others once its parent is 0700."""
    home.chmod(0o700)
    for entry in home.iterdir():
        try:
            if entry.is_symlink():
                continue
            entry.chmod(0o700 if entry.is_dir() else 0o600)
        except OSError:
            continue  # another process removed it meanwhile


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


# -- the environment as a whole: which UNDERLAY_* names mean something ----------------------

ENV_PREFIX = "UNDERLAY_"

#: Variables that are not settings of the server but are read by a client, a job or a tool.
OTHER_ENV: dict[str, str] = {
    "UNDERLAY_URL": "Server URL for the CLI and SDK (over the profile's).",
    "UNDERLAY_TOKEN": "API token for the CLI and SDK (over the profile's).",
    "UNDERLAY_PROJECT": "Default project for the CLI and SDK (over the profile's).",
    "UNDERLAY_PROFILE": "Which saved client profile to use (over the current one).",
    "UNDERLAY_RETRY_BUDGET_S": "Seconds one SDK call may spend retrying while the server is "
    "unreachable or answers 502/503/504 (default 30; 0: never). The CLI retries only when set "
    "or inside a job.",
    "UNDERLAY_JOB_ID": "Set by the platform inside a job: the job's id.",
    "UNDERLAY_ATTEMPT": "Set by the platform inside a job: the attempt number.",
    "UNDERLAY_GPU_FRACTION": "Set by the platform inside a job: its share of one GPU.",
    "UNDERLAY_TRACES_DIR": "Where `underlay simulate` finds trace files.",
    "UNDERLAY_DEBUG": "Set to 1: the CLI shows a traceback for an internal error.",
    "UNDERLAY_TEST_PG": "The test suite's PostgreSQL URL.",
}

# words people write for a setting, mapped to the word its name uses
_SYNONYMS = {
    "DATABASE": "STORE",
    "DB": "STORE",
    "SQL": "STORE",
    "BLOB": "BLOBS",
    "STORAGE": "BLOBS",
    "BUCKET": "BLOBS",
    "S3": "BLOBS",
    "LOGGING": "LOG",
    "LOGLEVEL": "LOG_LEVEL",
    "PORT": "SERVER_PORT",
    "HOST": "SERVER_HOST",
    "ISOLATION": "COMPUTE_ISOLATION",
    "PRICES": "COMPUTE_PRICES",
}


def setting_env_names() -> dict[str, bool]:
    """Every environment name of a setting, mapped to whether deeper names under it are
    accepted too (a dict setting such as ``UNDERLAY_COMPUTE__PRICES__A100``). A nested
    section's own name (``UNDERLAY_STORE``, a JSON object) counts as well."""
    names: dict[str, bool] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field_name, info in model.model_fields.items():
            name = prefix + field_name.upper()
            kind = info.annotation
            nested = isinstance(kind, type) and issubclass(kind, BaseModel)
            is_dict = getattr(kind, "__origin__", None) is dict
            names[name] = is_dict
            if nested:
                walk(kind, name + "__")  # type: ignore[arg-type]

    walk(Settings, ENV_PREFIX)
    return names


def closest_env_name(name: str) -> str | None:
    """The known name an unknown ``UNDERLAY_*`` variable most likely meant, if any."""
    import difflib

    known = [*setting_env_names(), *OTHER_ENV]
    squashed = {k.removeprefix(ENV_PREFIX).replace("__", "_"): k for k in known}
    words = [w for w in name.removeprefix(ENV_PREFIX).upper().split("_") if w]
    guess = "_".join(_SYNONYMS.get(w, w) for w in words)
    if guess in squashed:
        return squashed[guess]
    match = difflib.get_close_matches(guess, list(squashed), n=1, cutoff=0.6)
    return squashed[match[0]] if match else None


def unknown_env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One warning for each ``UNDERLAY_*`` variable in ``environ`` that nothing reads, naming
    the closest setting: a misspelt setting is otherwise silently ignored."""
    settings = setting_env_names()
    known = settings.keys() | OTHER_ENV.keys()
    deep = [name + "__" for name, takes_keys in settings.items() if takes_keys]
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if any(upper.startswith(prefix) for prefix in deep):
            continue
        closest = closest_env_name(upper)
        hint = f"; did you mean {closest}?" if closest else ""
        warnings.append(f"{name} is not an underlay setting and is ignored{hint}")
    return warnings

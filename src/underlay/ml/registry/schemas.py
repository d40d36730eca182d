"""Request and response shapes of the registry, shared by the API and the SDK (pydantic only,
so the SDK can import it lightly)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from underlay.schemas import Line, Name, Text

AliasName = Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_-]{0,62}$")
LongText = Field(default="", max_length=20_000)
MAX_ID = 2**31 - 1


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ModelCreate(_In):
    name: str = Name
    description: Line = Field(default="", max_length=1000)
    intended_use: Text = LongText
    limitations: Text = LongText
    license: Line = Field(default="", max_length=255)
    data_license: Line = Field(default="", max_length=255)


class ModelUpdate(_In):
    description: Line | None = Field(default=None, max_length=1000)
    intended_use: Text | None = Field(default=None, max_length=20_000)
    limitations: Text | None = Field(default=None, max_length=20_000)
    license: Line | None = Field(default=None, max_length=255)
    data_license: Line | None = Field(default=None, max_length=255)


class ModelRead(_Out):
    name: str
    description: str
    intended_use: str
    limitations: str
    license: str
    data_license: str
    created_at: dt.datetime
    updated_at: dt.datetime
    latest_version: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict, description="Alias -> version now.")


class VersionRegister(_In):
    run: int = Field(ge=1, le=MAX_ID, description="The run whose artifacts make the version.")
    path: Line = Field(min_length=1, max_length=1024, description="Artifact path in the run.")
    description: Line = Field(default="", max_length=1000)


class ModelVersionRead(_Out):
    model: str
    version: int
    run: int | None
    artifact_path: str
    flavor: str
    description: str
    file_count: int
    total_size: int
    signature: dict[str, Any] = Field(description="Inputs and outputs inferred at logging.")
    key_id: str = Field(description="The platform signing key that signed the manifest.")
    signed: bool
    aliases: list[str] = Field(default_factory=list)
    created_at: dt.datetime


class AliasSet(_In):
    version: int = Field(ge=1, le=MAX_ID)
    reason: Line = Field(min_length=1, max_length=1000)


class AliasEventRead(_Out):
    alias: str
    version: int | None = Field(description="The version it named from then on; null: removed.")
    previous_version: int | None
    actor: str
    reason: str
    at: dt.datetime


class AliasHistoryRead(BaseModel):
    model: str
    at: dt.datetime | None = Field(description="The moment asked about (null: now).")
    held: dict[str, int | None] = Field(description="Alias -> the version it named then.")
    events: list[AliasEventRead]


class ManifestFileRead(BaseModel):
    path: str
    sha256: str
    size: int


class VerifiedManifestRead(BaseModel):
    """A version that passed the server's checks, and what the client checks again."""

    model: str
    version: int
    flavor: str
    manifest: str = Field(description="The signed manifest bytes (UTF-8 JSON).")
    signature: str = Field(description="Ed25519 signature of the manifest, base64.")
    key_id: str
    public_key: str = Field(description="The platform's Ed25519 public key, base64.")
    files: list[ManifestFileRead]


class RefusalReport(_In):
    file: Line = Field(min_length=1, max_length=1024)
    reason: Line = Field(min_length=1, max_length=1000)


class CardSectionRead(BaseModel):
    key: str
    title: str
    markdown: str


class CardRead(BaseModel):
    model: str
    version: int
    format: Literal["markdown", "html"]
    text: str
    sections: list[CardSectionRead]

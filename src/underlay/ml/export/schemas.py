"""Request and response shapes of registering an export (pydantic only, for the SDK too)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from underlay.ml.registry.schemas import ModelVersionRead

Digest = Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")


class ExportFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    path: str = Field(min_length=1, max_length=1024)
    digest: str = Digest
    size: int = Field(ge=0)


class ExportRegister(BaseModel):
    """The exported files, already uploaded as blobs of the project."""

    model_config = ConfigDict(extra="forbid", strict=True)

    target: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z][a-z0-9_-]{0,62}$",
        description="The model to add the version to; NAME-onnx when omitted.",
    )
    files: list[ExportFile] = Field(min_length=1, max_length=100)


class ExportRead(BaseModel):
    source: ModelVersionRead = Field(description="The version that was exported.")
    version: ModelVersionRead = Field(description="The registered export.")
    report: dict[str, Any] = Field(description="The export report (docs/export.md).")

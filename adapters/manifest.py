"""The manifest stored beside every adapter version: identity, shape, checksums, provenance."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from adapters.names import NAME_PATTERN, VERSION_PATTERN

MANIFEST_FILE = "manifest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Frozen):
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: int = Field(ge=0)


class BaseModelRef(_Frozen):
    """The base an adapter was trained for: vLLM's served name and a hash of its config.json."""

    name: str
    config_sha256: str


class AdapterManifest(_Frozen):
    """Written last when a version is pushed: a version without a manifest does not exist."""

    format: Literal[1] = 1
    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    version: Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
    base_model: BaseModelRef
    rank: int = Field(gt=0)
    alpha: float
    target_modules: list[str]
    files: dict[str, FileEntry]
    size_bytes: int = Field(ge=0)
    created_at: datetime
    created_by: str
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="filled in by training: dataset card, training config, evaluation scores",
    )

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def file_entry(content: bytes) -> FileEntry:
    return FileEntry(sha256=hashlib.sha256(content).hexdigest(), size=len(content))

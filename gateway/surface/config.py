"""The `requests` config section: which fields and content parts a route accepts, and bounds.

The top-level `requests` section gives every route its defaults; a route's own `requests`
replaces the keys it sets (and only those). docs/security.md says what each key protects.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.surface.fields import NEVER_FORWARDED

MediaPartType = Literal["image_url", "video_url", "audio_url", "input_audio"]

INT64_MAX = 2**63 - 1
_HOST = re.compile(r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?(:\d{1,5})?")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MediaPartConfig(_Section):
    """One media content part type a route accepts: inline data, or fetched from named hosts."""

    max_bytes: int = Field(
        default=1024 * 1024, gt=0, description="largest decoded size of one inline (base64) part"
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="hosts (`name` or `name:port`) vLLM may fetch this media from over http(s); "
        "empty: inline data only, never a URL",
    )

    @field_validator("hosts")
    @classmethod
    def _plain_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not _HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a lower-case host name or host:port")
        return hosts


class RequestsConfig(_Section):
    """What one request may contain on a route: extra fields, media, and bounds."""

    extra_fields: list[str] = Field(
        default_factory=list,
        description="top-level fields forwarded beyond the allowlist (docs/security.md says "
        "what each risky one does)",
    )
    content_parts: dict[MediaPartType, MediaPartConfig] = Field(
        default_factory=dict, description="media content part types accepted; text always is"
    )
    max_n: int = Field(default=4, ge=1, description="choices per request (`n`)")
    max_stop: int = Field(default=4, ge=0, description="stop strings per request")
    max_stop_chars: int = Field(default=256, ge=1, description="characters per stop string")
    max_logprobs: int = Field(
        default=20, ge=0, description="`top_logprobs`, completions' `logprobs`, `prompt_logprobs`"
    )
    max_content_chars: int = Field(
        default=256 * 1024,
        gt=0,
        description="characters of text in all messages (or prompt and suffix) of a request",
    )
    max_tools: int = Field(default=32, ge=0, description="tools per request")
    max_tools_bytes: int = Field(
        default=64 * 1024, gt=0, description="size of the `tools` list as JSON"
    )
    max_logit_bias: int = Field(default=300, ge=0, description="entries of `logit_bias`")
    seed_min: int = Field(default=0, ge=-(2**63), le=INT64_MAX)
    seed_max: int = Field(default=INT64_MAX, ge=-(2**63), le=INT64_MAX)

    @field_validator("extra_fields")
    @classmethod
    def _not_gateway_owned(cls, names: list[str]) -> list[str]:
        owned = sorted(NEVER_FORWARDED.intersection(names))
        if owned:
            raise ValueError(f"`{owned[0]}` is decided by the gateway and cannot be forwarded")
        return names

    @model_validator(mode="after")
    def _seed_range(self) -> RequestsConfig:
        if self.seed_min > self.seed_max:
            raise ValueError("seed_min must not exceed seed_max")
        return self

    def overridden_by(self, route: RequestsConfig | None) -> RequestsConfig:
        """These defaults with the keys a route's own section sets."""
        if route is None:
            return self
        # Validated again: a route's seed_min may pass the defaults' seed_max.
        return RequestsConfig.model_validate(
            {**self.model_dump(), **route.model_dump(include=route.model_fields_set)}
        )

"""The `shadow:` config section: how much shadow work one gateway process may take on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ShadowSettings(BaseModel):
    """The shadows' own admission budget, apart from real traffic's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int = Field(
        default=16, ge=0, description="shadow calls in flight in this process; past it, dropped"
    )
    max_body_bytes: int = Field(
        default=1_048_576, gt=0, description="a larger shadow answer is dropped, not compared"
    )
    max_compare_chars: int = Field(
        default=8192, gt=0, description="text compared for free-text similarity (the rest is cut)"
    )

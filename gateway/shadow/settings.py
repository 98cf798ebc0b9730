"""The `shadow:` config section (how much shadow work one process may take on) and a route's
`shadow_category` (how a request's input category is found)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


MAX_CATEGORIES = 8
OTHER_CATEGORY = "other"


class ShadowCategory(BaseModel):
    """A route's input categories for the shadow test: read from the request's `metadata`.

    A request whose `metadata[metadata_key]` is one of `values` is in that category; any other
    request (no metadata, the key missing, another value) is in `other`. Each category, `other`
    included, is tested apart as well as the whole traffic, so their number is bounded.
    The category is read from the request, never from an answer: a label read from stable's
    answer exists only where that answer was readable, so stable could not break the schema
    inside a category and a candidate as good as stable would look worse (docs/rollouts.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata_key: str = Field(
        min_length=1, max_length=64, description="the request `metadata` key naming the category"
    )
    values: tuple[str, ...] = Field(
        min_length=1,
        max_length=MAX_CATEGORIES,
        description=f"categories tested apart (at most {MAX_CATEGORIES}); others: `other`",
    )

    @field_validator("values")
    @classmethod
    def _distinct_named(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(values)) != len(values):
            raise ValueError("categories must be distinct")
        for value in values:
            if not value or len(value) > 64 or value == OTHER_CATEGORY:
                raise ValueError(
                    f"a category is 1 to 64 characters and not `{OTHER_CATEGORY}`: {value!r}"
                )
        return values

    @property
    def groups(self) -> tuple[str, ...]:
        """Every category a request can be counted in, `other` last."""
        return (*self.values, OTHER_CATEGORY)

    def category_of(self, fields: Mapping[str, Any]) -> str:
        """The category of a request, from its top-level fields."""
        metadata = fields.get("metadata")
        value = metadata.get(self.metadata_key) if isinstance(metadata, dict) else None
        return value if isinstance(value, str) and value in self.values else OTHER_CATEGORY

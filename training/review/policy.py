"""Which answers of a route go to review: a sample of ordinary traffic and every flagged one.

Pure functions over one answer's signals; the capture writer applies them as it writes. A
shadow pair (a stable answer and the candidate's answer to the same request) is selected the
same way (`pair_selection`): by the route's sample rate, or always when the comparison flagged
it, up to the same budget.
"""

from __future__ import annotations

import zlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Flag = Literal["schema_invalid", "refused", "drifted", "negative_feedback"]
FLAGS: tuple[Flag, ...] = ("schema_invalid", "refused", "drifted", "negative_feedback")
SAMPLED = "sampled"
# What a shadow pair's comparison flags (`gateway.shadow.compare.pair_flags`).
PairFlag = Literal["candidate_worse", "disagreed"]
PAIR_FLAGS: tuple[PairFlag, ...] = ("candidate_worse", "disagreed")


class ReviewPolicy(BaseModel):
    """A route's share of ordinary answers for review, the flags that always queue an answer,
    and the budget: the most unjudged items one route/version/arm may hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    sample_rate: float = Field(
        default=0.01, ge=0, le=1, description="share of ordinary answers queued for review"
    )
    flags: list[Flag] = Field(
        default_factory=lambda: list(FLAGS), description="signals that always queue an answer"
    )
    budget: int = Field(
        default=200, gt=0, description="most unjudged items per route, version and arm"
    )


def sample_bucket(request_id: str) -> float:
    """Where a request id falls in [0, 1): the capture policy samples with the same hash, so a
    review rate at or under the capture rate never captures more."""
    return zlib.crc32(request_id.encode()) / 0x1_0000_0000


def flags_of(
    schema_verdict: str,
    refusal: bool | None,
    drifted: bool,
    finish_reason: str | None = None,
) -> list[Flag]:
    """The flags an answer raises by itself (negative feedback comes later, from people)."""
    flags: list[Flag] = []
    if schema_verdict in ("invalid", "truncated") or finish_reason == "length":
        flags.append("schema_invalid")
    if refusal is True:
        flags.append("refused")
    if drifted:
        flags.append("drifted")
    return flags


def selection(policy: ReviewPolicy, request_id: str, flags: list[Flag]) -> str | None:
    """Why the answer is queued (its first configured flag, or `sampled`); None: it is not."""
    if not policy.enabled:
        return None
    for flag in flags:
        if flag in policy.flags:
            return flag
    return SAMPLED if sample_bucket(request_id) < policy.sample_rate else None


def pair_selection(policy: ReviewPolicy, request_id: str, flags: tuple[str, ...]) -> str | None:
    """Why a shadow pair is queued (its first flag, or `sampled`); None: it is not. A flagged
    pair always is, whichever flags the policy lists for single answers."""
    if not policy.enabled:
        return None
    for flag in flags:
        if flag in PAIR_FLAGS:
            return flag
    return SAMPLED if sample_bucket(request_id) < policy.sample_rate else None

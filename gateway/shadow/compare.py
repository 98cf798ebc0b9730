"""Compare one stable answer with the candidate's answer to the same request (pure).

Each pair yields, per signal, whether each side was bad (None: not checked), and an agreement:
for a route with an output contract, exact match of the parsed documents; for answers that are
both JSON, the share of leaf fields with equal values; otherwise a similarity in [0, 1] of the
two texts' word sequences (difflib's ratio). See docs/rollouts.md, "Shadow".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

AgreementKind = Literal["structured", "json", "text"]
# A side is "slower" when it took this many times the other side's time, or more, and at least
# this much longer: gaps of milliseconds are the gateway's own scheduling, not the model's.
SLOWER_FACTOR = 1.5
SLOWER_MIN_GAP_S = 0.25
PAIR_SIGNALS = ("error", "schema_invalid", "refusal", "truncated", "slower")
# Two free-text answers whose similarity is under this disagree (JSON ones: unless equal).
DISAGREEMENT_BELOW = 0.5


# A copy whose upstream call failed (unreachable, timed out, shed): compared as a 5xx answer.
# Only `>= 500` matters to the comparison, so the kind of failure needs no HTTP status here.
UPSTREAM_FAILED_STATUS = 502


@dataclass(frozen=True, slots=True)
class Side:
    """What one side of a pair amounted to."""

    status: int
    latency_s: float
    text: str | None
    finish_reason: str | None = None
    completion_tokens: int = 0
    schema_valid: bool | None = None  # None: the route has no contract
    refusal: bool | None = None  # None: not checked (no text)


@dataclass(frozen=True, slots=True)
class Agreement:
    kind: AgreementKind
    exact: bool
    score: float  # 1.0: the same answer


@dataclass(frozen=True, slots=True)
class PairComparison:
    """One pair's signals (signal -> (stable bad, candidate bad)) and agreement."""

    signals: dict[str, tuple[bool | None, bool | None]]
    agreement: Agreement | None  # None: a side has no answer text
    length_ratio: float | None  # candidate's completion tokens over stable's


def _both_answered(stable: Side, candidate: Side) -> bool:
    return stable.status == 200 and candidate.status == 200


def _leaves(document: Any, path: str = "") -> Iterator[tuple[str, bytes]]:
    if isinstance(document, dict) and document:
        for key, value in document.items():
            yield from _leaves(value, f"{path}.{key}")
    elif isinstance(document, list) and document:
        for index, value in enumerate(document):
            yield from _leaves(value, f"{path}[{index}]")
    else:
        yield path, orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def field_agreement(stable: Any, candidate: Any) -> float:
    """The share of leaf paths (of both documents together) whose values are equal."""
    left, right = dict(_leaves(stable)), dict(_leaves(candidate))
    paths = left.keys() | right.keys()
    if not paths:
        return 1.0
    same = sum(1 for path in paths if path in left and left.get(path) == right.get(path))
    return same / len(paths)


def text_similarity(stable: str, candidate: str, max_chars: int = 8192) -> float:
    """Word-sequence similarity in [0, 1] (2 * matches / total words); two empty texts: 1."""
    a, b = stable[:max_chars].split(), candidate[:max_chars].split()
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _parsed(text: str) -> tuple[bool, Any]:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None
    return isinstance(document, dict | list), document


def agreement(stable: str, candidate: str, structured: bool, max_chars: int = 8192) -> Agreement:
    """How far two answers agree: exact and field-level for JSON, similarity for text."""
    left_ok, left = _parsed(stable)
    right_ok, right = _parsed(candidate)
    if left_ok and right_ok:
        kind: AgreementKind = "structured" if structured else "json"
        return Agreement(kind, left == right, field_agreement(left, right))
    if structured:  # one side broke the contract: no field of it can be trusted to agree
        return Agreement("structured", False, 0.0)
    exact = stable.strip() == candidate.strip()
    return Agreement("text", exact, 1.0 if exact else text_similarity(stable, candidate, max_chars))


def _slower(stable: Side, candidate: Side) -> tuple[bool | None, bool | None]:
    if not _both_answered(stable, candidate):
        return None, None

    def slower(one: float, other: float) -> bool:
        return one >= SLOWER_FACTOR * other and one - other >= SLOWER_MIN_GAP_S

    return (
        slower(stable.latency_s, candidate.latency_s),
        slower(candidate.latency_s, stable.latency_s),
    )


def _answered(side: Side, value: bool | None) -> bool | None:
    return value if side.status == 200 else None


def compare(
    stable: Side, candidate: Side, structured: bool, max_chars: int = 8192
) -> PairComparison:
    """Both sides on every pair signal, and their agreement."""
    signals: dict[str, tuple[bool | None, bool | None]] = {
        "error": (stable.status >= 500, candidate.status >= 500),
        "schema_invalid": (
            None if stable.schema_valid is None else not stable.schema_valid,
            None if candidate.schema_valid is None else not candidate.schema_valid,
        ),
        "refusal": (_answered(stable, stable.refusal), _answered(candidate, candidate.refusal)),
        "truncated": (
            _answered(stable, stable.finish_reason == "length"),
            _answered(candidate, candidate.finish_reason == "length"),
        ),
        "slower": _slower(stable, candidate),
    }
    agreed = None
    if _both_answered(stable, candidate) and stable.text is not None and candidate.text is not None:
        agreed = agreement(stable.text, candidate.text, structured, max_chars)
    ratio = None
    if _both_answered(stable, candidate) and stable.completion_tokens:
        ratio = candidate.completion_tokens / stable.completion_tokens
    return PairComparison(signals, agreed, ratio)


def pair_flags(comparison: PairComparison) -> tuple[str, ...]:
    """Why a pair deserves a person's look: `candidate_worse` (bad on a signal where stable was
    not), `disagreed` (JSON answers not equal, or texts less similar than DISAGREEMENT_BELOW)."""
    flags: list[str] = []
    if any(candidate and not stable for stable, candidate in comparison.signals.values()):
        flags.append("candidate_worse")
    agreed = comparison.agreement
    if (
        agreed is not None
        and not agreed.exact
        and (agreed.kind != "text" or agreed.score < DISAGREEMENT_BELOW)
    ):
        flags.append("disagreed")
    return tuple(flags)

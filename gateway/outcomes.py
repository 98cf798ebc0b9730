"""After an answer: request metrics, refusal and drift signals, and the rollout tallies.

Counters are updated inline (they cost well under a microsecond); the refusal detector and the
drift window run in a callback scheduled on the event loop, so they never delay the bytes of
the answer they judge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.analysis import RequestOutcome, RolloutRecorder
from gateway.contracts import Verdict
from gateway.routing import Target
from monitoring import metrics
from monitoring.drift import DriftMonitor
from monitoring.refusals import REFUSAL_WINDOW_CHARS, RefusalDetector

log = logging.getLogger("turnout.outcomes")

UNKNOWN_ROUTE = "unknown"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one finished request amounted to (target None: it never resolved to a route)."""

    target: Target | None
    status: int
    latency_s: float
    verdict: Verdict | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_text: str = ""
    answer_text: str | None = None  # None: not known (an error, or a stream not followed)


def prompt_text(fields: Mapping[str, Any]) -> str:
    """What the caller asked, for drift: the user messages, or the completion prompt."""
    messages = fields.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            m["content"]
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
        )
    prompt = fields.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""


def answer_of(body: bytes) -> tuple[str | None, int, int]:
    """(first choice's text, prompt tokens, completion tokens) of a whole answer."""
    try:
        document = orjson.loads(body)
        usage = document.get("usage") or {}
        choices = document.get("choices") or [{}]
        message = choices[0].get("message")
        text = message.get("content") if isinstance(message, dict) else choices[0].get("text")
        return (
            text if isinstance(text, str) else None,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
    except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError, ValueError):
        return None, 0, 0


class StreamTranscript:
    """Follows a stream's events for the start of the answer and the usage, cheaply."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def feed(self, chunk: bytes) -> None:
        for event in chunk.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            if self._length >= REFUSAL_WINDOW_CHARS and b'"usage"' not in event:
                continue
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                continue
            usage = data.get("usage") or {}
            self.prompt_tokens = int(usage.get("prompt_tokens") or self.prompt_tokens)
            self.completion_tokens = int(usage.get("completion_tokens") or self.completion_tokens)
            for choice in (data.get("choices") or [])[:1]:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str) and self._length < REFUSAL_WINDOW_CHARS:
                    self._parts.append(text)
                    self._length += len(text)

    @property
    def text(self) -> str:
        return "".join(self._parts)


class OutcomeRecorder:
    """Turns outcomes into metrics, signals and rollout tallies."""

    def __init__(
        self, rollouts: RolloutRecorder, refusals: RefusalDetector, drift: DriftMonitor
    ) -> None:
        self._rollouts = rollouts
        self._refusals = refusals
        self._drift = drift

    def record(self, outcome: Outcome) -> None:
        target = outcome.target
        if target is None:
            metrics.REQUESTS.labels(UNKNOWN_ROUTE, "none", "stable", str(outcome.status)).inc()
            return
        labels = (target.route, target.version_label, target.arm)
        metrics.REQUESTS.labels(*labels, str(outcome.status)).inc()
        metrics.REQUEST_DURATION.labels(*labels).observe(outcome.latency_s)
        if outcome.prompt_tokens:
            metrics.PROMPT_TOKENS.labels(*labels).inc(outcome.prompt_tokens)
        if outcome.completion_tokens:
            metrics.COMPLETION_TOKENS.labels(*labels).inc(outcome.completion_tokens)
        try:
            asyncio.get_running_loop().call_soon(self._signals, outcome, target)
        except RuntimeError:  # no loop (called from a test or a thread): judge right here
            self._signals(outcome, target)

    def _signals(self, outcome: Outcome, target: Target) -> None:
        labels = (target.route, target.version_label, target.arm)
        refusal = None
        try:
            if outcome.answer_text is not None and outcome.status == 200:
                refusal = self._refusals.is_refusal(outcome.answer_text)
                result = "refusal" if refusal else "answer"
                metrics.REFUSAL_CHECKS.labels(*labels, result).inc()
            if outcome.prompt_text and outcome.status == 200:
                self._drift.observe(
                    target.route,
                    target.version_label,
                    outcome.prompt_text,
                    outcome.prompt_tokens or None,
                )
        except Exception:  # a signal must never take a request down with it
            log.exception("recording signals for %s failed", target.route)
        if target.rollout is not None and target.rollout.candidate is not None:
            schema_valid = None if outcome.verdict is None else outcome.verdict.ok
            self._rollouts.record(
                target.rollout,
                target.arm,
                RequestOutcome(
                    outcome.status, outcome.latency_s, schema_valid=schema_valid, refusal=refusal
                ),
            )

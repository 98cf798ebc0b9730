"""After an answer: request metrics, refusal and drift signals, rollout tallies and capture.

Counters are updated inline (they cost well under a microsecond); the refusal detector, the
drift window and the capture record are handled in a callback scheduled on the event loop, so
they never delay the bytes of the answer they judge. Capture only queues (it never blocks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from prometheus_client import Counter, Histogram

from gateway.contracts.contract import ContractVerdict
from gateway.protection.auth import Caller
from gateway.rollouts.analysis import AnalysisSample, RolloutRecorder
from gateway.routing.table import Target
from monitoring import metrics
from monitoring.drift import DriftMonitor
from monitoring.refusal_worker import RefusalScore, RefusalWorker
from monitoring.refusals import RefusalDetector, detector_name
from monitoring.semantic_feed import SemanticDriftFeed
from training.capture import CaptureRecord, CaptureSink

log = logging.getLogger("turnout.outcomes")

UNKNOWN_ROUTE = "unknown"


@dataclass(frozen=True, slots=True)
class Answer:
    """What came back: the first choice's text (None: unknown) and the backend's token counts."""

    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RefusalListener(Protocol):
    """Told the refusal verdict the served path gave an answer (a shadow pair reuses it)."""

    def judged(self, detector: str, refusal: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """What one finished request amounted to (target None: it never resolved to a route)."""

    target: Target | None
    status: int
    latency_s: float
    verdict: ContractVerdict | None = None
    answer: Answer = Answer()
    request_id: str = ""
    client_request_id: str | None = None
    caller: Caller | None = None
    endpoint: Literal["chat", "completions"] = "chat"
    fields: Mapping[str, Any] = field(default_factory=dict)
    refusal_listener: RefusalListener | None = None  # told this answer's refusal verdict


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


def answer_of(body: bytes) -> Answer:
    """The first choice and the usage of a whole answer."""
    try:
        document = orjson.loads(body)
        usage = document.get("usage") or {}
        choice = (document.get("choices") or [{}])[0]
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else choice.get("text")
        return Answer(
            text if isinstance(text, str) else None,
            choice.get("finish_reason"),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )
    except (orjson.JSONDecodeError, AttributeError, IndexError, TypeError, ValueError):
        return Answer()


_PARTS_PER_BLOCK = 32


class StreamTranscript:
    """Follows a stream's events: the first choice's text, how it ended, and the usage.

    The text is kept as blocks of `_PARTS_PER_BLOCK` parts joined, and the parts since: a
    one-token part is a string object of about 60 bytes, so a long answer kept apart would
    hold over ten times its own size for as long as the stream is open. (Joining each block
    once, rather than everything so far, keeps the copying linear in the answer's length.)"""

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._prompt_tokens = 0
        self._completion_tokens = 0

    def feed(self, chunk: bytes) -> None:
        # Most chunks are one whole event: parsed in place, with no split into a list. The
        # JSON parser takes the event's trailing blank line as whitespace.
        if chunk.startswith(b"data: {") and chunk.find(b"\n\n") == len(chunk) - 2:
            self._event(chunk)
            return
        for event in chunk.split(b"\n\n"):
            if event.startswith(b"data: {"):
                self._event(event)

    def _event(self, event: bytes) -> None:
        """One `data: {...}` event (the blank line after it may be there)."""
        try:
            data = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return
        usage = data.get("usage")
        if usage:
            self._prompt_tokens = int(usage.get("prompt_tokens") or self._prompt_tokens)
            self._completion_tokens = int(usage.get("completion_tokens") or self._completion_tokens)
        choices = data.get("choices")
        if not choices:
            return
        for choice in choices:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                self._parts.append(text)
                if len(self._parts) >= _PARTS_PER_BLOCK:
                    self._blocks.append("".join(self._parts))
                    self._parts.clear()
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                self._finish_reason = finish_reason

    def answer(self) -> Answer:
        return Answer(
            "".join(self._blocks) + "".join(self._parts),
            self._finish_reason,
            self._prompt_tokens,
            self._completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class _RequestSeries:
    requests: Counter
    duration: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter


class SignalBudget:
    """At most `per_second` answers a second get the refusal check, the drift window and the
    capture offer; past that, answers are skipped (a sample).

    LLM traffic rarely reaches it (each answer takes seconds); a flood of short requests does,
    and then the checks would cost more than the requests themselves. The allowance refills
    continuously and holds at most a twentieth of a second's worth, so the checks are spread
    over the second rather than spent in a burst at its start, which would hold back the
    requests that arrive during the burst.
    """

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._capacity = max(1.0, per_second / 20)
        self._clock = clock
        self._available = self._capacity
        self._updated = clock()

    def take(self) -> bool:
        now = self._clock()
        available = min(self._capacity, self._available + (now - self._updated) * self._per_second)
        self._updated = now
        if available < 1:
            self._available = available
            return False
        self._available = available - 1
        return True


class OutcomeRecorder:
    """Turns outcomes into metrics, signals, rollout tallies and capture records."""

    def __init__(
        self,
        rollouts: RolloutRecorder,
        refusals: RefusalDetector,
        drift: DriftMonitor,
        capture: CaptureSink,
        budget: SignalBudget,
        refusal_worker: RefusalWorker | None = None,
        semantic_drift: SemanticDriftFeed | None = None,
    ) -> None:
        self._rollouts = rollouts
        self._refusals = refusals
        # Set: answers are judged on its thread (the learned detector) instead of `refusals`.
        self._worker = refusal_worker
        # The `detector` label: refusal rates are compared only within one detector's version.
        self._detector = refusal_worker.scorer.name if refusal_worker else detector_name(refusals)
        self._drift = drift
        self._semantic_drift = semantic_drift  # set: prompts are embedded on the worker
        self._capture = capture
        self._budget = budget
        self._children: dict[tuple[str, str, str, int], _RequestSeries] = {}

    def record(self, outcome: FinishedRequest) -> None:
        target = outcome.target
        if target is None:
            metrics.REQUESTS.labels(UNKNOWN_ROUTE, "none", "stable", str(outcome.status)).inc()
            return
        series = self._series(target, outcome.status)
        series.requests.inc()
        series.duration.observe(outcome.latency_s)
        if outcome.answer.prompt_tokens:
            series.prompt_tokens.inc(outcome.answer.prompt_tokens)
        if outcome.answer.completion_tokens:
            series.completion_tokens.inc(outcome.answer.completion_tokens)
        failed = outcome.verdict is not None and not outcome.verdict.ok
        if not (failed or self._budget.take()):
            self._tally(outcome, target, refusal=None)  # failures are never skipped
            return
        try:
            asyncio.get_running_loop().call_soon(self._signals, outcome, target)
        except RuntimeError:  # no loop (called from a thread): judge right here
            self._signals(outcome, target)

    def _series(self, target: Target, status: int) -> _RequestSeries:
        """The request metrics' children for one route, version, arm and status, looked up
        once (prometheus_client's `labels()` takes a lock and builds tuples on every call)."""
        key = (target.route, target.version_label, target.arm, status)
        series = self._children.get(key)
        if series is None:
            labels = key[:3]
            series = self._children[key] = _RequestSeries(
                metrics.REQUESTS.labels(*labels, str(status)),
                metrics.REQUEST_DURATION.labels(*labels),
                metrics.PROMPT_TOKENS.labels(*labels),
                metrics.COMPLETION_TOKENS.labels(*labels),
            )
        return series

    def _signals(self, outcome: FinishedRequest, target: Target) -> None:
        labels = (target.route, target.version_label, target.arm)
        refusal = None
        try:
            if outcome.status == 200 and outcome.answer.text is not None:
                if self._worker is not None:
                    if self._judge_off_loop(outcome, target):
                        return  # the worker's verdict finishes the signals (`_judged`)
                    prompt = None  # queue full: no verdict; drift has seen the prompt
                else:
                    refusal = self._refusals.is_refusal(outcome.answer.text)
                    if outcome.refusal_listener is not None:
                        outcome.refusal_listener.judged(self._detector, refusal)
                    verdict = "refusal" if refusal else "answer"
                    metrics.REFUSAL_CHECKS.labels(*labels, self._detector, verdict).inc()
                    prompt = prompt_text(outcome.fields)
                if prompt:
                    self._observe_prompt(target, prompt, outcome.answer.prompt_tokens)
            self._capture_outcome(outcome, target, refusal)
        except Exception:  # a signal must never take a request down with it
            log.exception("recording signals for %s failed", target.route)
        self._tally(outcome, target, refusal)

    def _judge_off_loop(self, outcome: FinishedRequest, target: Target) -> bool:
        """Hands the answer to the refusal worker; False when its queue is full (the answer
        then goes on without a refusal verdict)."""
        assert self._worker is not None
        assert outcome.answer.text is not None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no loop (called from a thread): finish on the worker thread
            loop = None

        def on_score(score: RefusalScore) -> None:  # on the worker thread
            if loop is None:
                self._judged(outcome, target, score.refusal)
            else:
                loop.call_soon_threadsafe(self._judged, outcome, target, score.refusal)

        prompt = prompt_text(outcome.fields)
        if prompt:
            self._observe_prompt(target, prompt, outcome.answer.prompt_tokens)
        return self._worker.submit(outcome.answer.text, on_score)

    def _observe_prompt(self, target: Target, prompt: str, prompt_tokens: int) -> None:
        """The prompt into the drift windows: term and length histograms here, embeddings on
        the worker (only queued here)."""
        self._drift.observe(target.route, target.version_label, prompt, prompt_tokens or None)
        if self._semantic_drift is not None:
            self._semantic_drift.offer(target.route, target.version_label, prompt)

    def _judged(self, outcome: FinishedRequest, target: Target, refusal: bool) -> None:
        """The rest of `_signals` once the worker has judged the answer."""
        labels = (target.route, target.version_label, target.arm)
        try:
            verdict = "refusal" if refusal else "answer"
            metrics.REFUSAL_CHECKS.labels(*labels, self._detector, verdict).inc()
            self._capture_outcome(outcome, target, refusal)
        except Exception:  # a signal must never take a request down with it
            log.exception("recording signals for %s failed", target.route)
        self._tally(outcome, target, refusal)

    def _tally(self, outcome: FinishedRequest, target: Target, refusal: bool | None) -> None:
        """The request, for the rollout analysis (only while a candidate serves: a shadow's
        pairs are counted apart, so the canary it may become starts from an empty window)."""
        rollout = target.rollout
        if rollout is not None and rollout.candidate is not None and rollout.mode != "shadow":
            schema_valid = None if outcome.verdict is None else outcome.verdict.ok
            self._rollouts.record(
                rollout,
                target.arm,
                AnalysisSample(
                    outcome.status, outcome.latency_s, schema_valid=schema_valid, refusal=refusal
                ),
            )

    def _capture_outcome(
        self, outcome: FinishedRequest, target: Target, refusal: bool | None
    ) -> None:
        """Answers (and answers refused for breaking their schema) go to the capture sink,
        whose per-route policy keeps every failure and a sample of the rest."""
        verdict = outcome.verdict
        output = outcome.answer.text if outcome.status == 200 else None
        if output is None and verdict is not None and not verdict.ok:
            output = verdict.text  # a refused answer: its raw text is what training needs
        if output is None:
            return
        messages = outcome.fields.get("messages")
        prompt = outcome.fields.get("prompt")
        caller = outcome.caller
        self._capture.offer(
            CaptureRecord(
                request_id=outcome.request_id,
                route=target.route,
                version=target.version_label,
                arm=target.arm,
                created_at=time.time(),
                endpoint=outcome.endpoint,
                output=output,
                finish_reason=outcome.answer.finish_reason,
                messages=tuple(messages) if isinstance(messages, list) else None,
                prompt=prompt if isinstance(prompt, str) else None,
                schema_verdict=verdict.result if verdict is not None else "none",
                schema_errors=tuple(
                    f"{i.path}: {i.message}" for i in (verdict.issues if verdict else ())
                ),
                refusal=refusal,
                latency_s=outcome.latency_s,
                tenant=caller.tenant.name if caller is not None else None,
                key_id=caller.key_id if caller is not None else None,
                client_request_id=outcome.client_request_id,
                training=caller.tenant.training if caller is not None else "allow",
                drifted=self._drift.drifting(target.route, target.version_label),
            )
        )

"""A finished pair: compare it, count it for the analysis and the metrics, capture it.

Runs on the event loop after both answers are out (scheduled with `call_soon`). The
candidate's answer is offered to the same capture sink as every answer (same per-route policy,
redaction and bounded queue) under the stable answer's request id, with `arm="shadow"`: the
policy's sample is decided by that id, so a sampled pair keeps both sides. The record carries
the stable answer and the comparison's flags, for the route's review policy to queue the pair.
Refusal is judged by the phrase rules inline, or, where the judge is the configured refusal
detector, by the judge on the signals worker (both answers, cached), the pair being compared
once both verdicts are back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from gateway.outcomes.recorder import FinishedRequest
from gateway.shadow.compare import PairComparison, Side, compare, pair_flags
from gateway.shadow.dispatch import ShadowPair
from gateway.shadow.evidence import PairTally
from monitoring.metrics import SHADOW_AGREEMENT, SHADOW_REQUESTS, SHADOW_SIGNAL_EVENTS
from monitoring.refusal_worker import RefusalScore, RefusalWorker
from monitoring.refusals import RefusalDetector, detector_name
from training.capture import CaptureRecord, PairCaptureSink, SchemaVerdict, answer_failed

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter as CounterChild
    from prometheus_client.metrics import Histogram as HistogramChild

log = logging.getLogger("turnout.shadow")


def stable_side(outcome: FinishedRequest, refusal: bool | None) -> Side:
    answer = outcome.answer
    verdict = outcome.verdict
    return Side(
        outcome.status,
        outcome.latency_s,
        answer.text if outcome.status == 200 else None,
        answer.finish_reason,
        answer.completion_tokens,
        None if verdict is None else verdict.ok,
        refusal,
    )


class PairRecorder:
    """Compares finished pairs and counts them per route for the shadow running on it."""

    def __init__(
        self,
        tally: PairTally,
        refusals: RefusalDetector,
        capture: PairCaptureSink,
        max_compare_chars: int = 8192,
        judge: RefusalWorker | None = None,
    ) -> None:
        self.tally = tally
        self._refusals = refusals
        self._detector = detector_name(refusals)
        # Set (the judge is the configured refusal detector): both answers of a pair are judged
        # on the signals worker, and the pair is compared once both verdicts are back.
        self._judge = judge
        self._capture = capture
        self._max_chars = max_compare_chars
        # Metric children looked up once: `labels()` locks and builds tuples on every call.
        self._events: dict[tuple[str, str, str, str], CounterChild] = {}
        self._compared: dict[str, CounterChild] = {}
        self._agreement: dict[tuple[str, str], HistogramChild] = {}

    def _count(self, route: str, signal: str, arm: str, bad: bool) -> None:
        key = (route, signal, arm, "bad" if bad else "good")
        child = self._events.get(key)
        if child is None:
            child = self._events[key] = SHADOW_SIGNAL_EVENTS.labels(*key)
        child.inc()

    def _refusal(self, text: str | None) -> bool | None:
        return None if text is None else self._refusals.is_refusal(text)

    def record(self, pair: ShadowPair) -> None:
        outcome, candidate = pair.stable, pair.candidate
        if outcome is None or candidate is None:
            return
        if self._judge is not None:
            answered = outcome.answer.text if outcome.status == 200 else None
            self._ask_judge(self._judge, pair, answered, candidate.text)
            return
        # Stable's verdict counts only on an answer (200), and is the served path's where it
        # scored the answer with the same rules; a candidate that gave the same text gets the
        # same verdict (the rules are a function of the text): each text is scored once.
        stable_refusal = None
        if outcome.status == 200:
            judged = pair.stable_judged  # the served path's own verdict, by the same rules
            if judged.detector == self._detector:
                stable_refusal = judged.refusal
            else:
                stable_refusal = self._refusal(outcome.answer.text)
        if candidate.text is not None and candidate.text == outcome.answer.text:
            candidate_refusal = stable_refusal
            if candidate_refusal is None:
                candidate_refusal = self._refusal(candidate.text)
        else:
            candidate_refusal = self._refusal(candidate.text)
        self._compare(pair, stable_refusal, candidate_refusal)

    def _ask_judge(
        self, judge: RefusalWorker, pair: ShadowPair, stable: str | None, candidate: str | None
    ) -> None:
        """Both answers to the judge's worker; the pair is compared, on the loop, once both
        verdicts are in. An answer the worker's full queue turns away gets no verdict (its
        refusal is not counted); the judge's own cache answers a repeated text."""
        loop = asyncio.get_running_loop()
        verdicts: list[bool | None] = [None, None]
        waiting = {0, 1}

        def judged(side: int, refusal: bool | None) -> None:  # on the loop
            verdicts[side] = refusal
            waiting.discard(side)
            if not waiting:
                self._compare(pair, verdicts[0], verdicts[1])

        for side, text in enumerate((stable, candidate)):
            if text is None:
                judged(side, None)
                continue

            def on_score(score: RefusalScore, side: int = side) -> None:  # on the worker
                loop.call_soon_threadsafe(judged, side, score.refusal)

            if not judge.submit(text, on_score):
                judged(side, None)

    def _compare(
        self, pair: ShadowPair, stable_refusal: bool | None, candidate_refusal: bool | None
    ) -> None:
        outcome, candidate = pair.stable, pair.candidate
        assert outcome is not None  # `record` compares only finished pairs
        assert candidate is not None
        try:
            stable = stable_side(outcome, stable_refusal)
            candidate = Side(
                candidate.status,
                candidate.latency_s,
                candidate.text,
                candidate.finish_reason,
                candidate.completion_tokens,
                candidate.schema_valid,
                candidate_refusal,
            )
            comparison = compare(stable, candidate, pair.contract is not None, self._max_chars)
            rollout = pair.target.rollout
            assert rollout is not None
            self.tally.record(rollout, comparison, pair.category)
            route = pair.target.route
            compared = self._compared.get(route)
            if compared is None:
                compared = self._compared[route] = SHADOW_REQUESTS.labels(route, "compared")
            compared.inc()
            for signal, (stable_bad, candidate_bad) in comparison.signals.items():
                if stable_bad is not None:
                    self._count(route, signal, "stable", stable_bad)
                if candidate_bad is not None:
                    self._count(route, signal, "candidate", candidate_bad)
            agreed = comparison.agreement
            if agreed is not None:
                observed = self._agreement.get((route, agreed.kind))
                if observed is None:
                    observed = SHADOW_AGREEMENT.labels(route, agreed.kind)
                    self._agreement[(route, agreed.kind)] = observed
                observed.observe(agreed.score)
            self._capture_candidate(pair, outcome, candidate, stable, comparison)
        except Exception:  # a comparison must never take the gateway down with it
            log.exception("comparing a shadow pair on %s failed", pair.target.route)

    def _capture_candidate(
        self,
        pair: ShadowPair,
        outcome: FinishedRequest,
        side: Side,
        stable: Side,
        comparison: PairComparison,
    ) -> None:
        if side.text is None:
            return
        verdict: SchemaVerdict = "none"
        if side.schema_valid is not None:
            verdict = "valid" if side.schema_valid else "invalid"
        paired = outcome.target is not None and stable.text is not None
        flags = pair_flags(comparison)
        # Decided first: most records are skipped by the sample, and building one costs more.
        failed = answer_failed(verdict, side.refusal, side.finish_reason)
        route = pair.target.route
        if self._capture.skips_candidate(
            route, outcome.request_id, failed, flags if paired else None
        ):
            return
        messages = outcome.fields.get("messages")
        prompt = outcome.fields.get("prompt")
        caller = outcome.caller
        served = None
        if paired:
            assert outcome.target is not None
            assert stable.text is not None
            answer = outcome.verdict
            served = CaptureRecord(
                request_id=outcome.request_id,
                route=outcome.target.route,
                version=outcome.target.version_label,
                arm=outcome.target.arm,
                created_at=time.time(),
                endpoint=outcome.endpoint,
                output=stable.text,
                finish_reason=stable.finish_reason,
                messages=tuple(messages) if isinstance(messages, list) else None,
                prompt=prompt if isinstance(prompt, str) else None,
                schema_verdict=answer.result if answer is not None else "none",
                schema_errors=tuple(
                    f"{i.path}: {i.message}" for i in (answer.issues if answer else ())
                ),
                refusal=stable.refusal,
                latency_s=stable.latency_s,
                tenant=caller.tenant.name if caller is not None else None,
                key_id=caller.key_id if caller is not None else None,
                client_request_id=outcome.client_request_id,
                training=caller.tenant.training if caller is not None else "allow",
            )
        self._capture.offer(
            CaptureRecord(
                request_id=outcome.request_id,
                route=pair.target.route,
                version=pair.target.version_label,
                arm="shadow",
                created_at=time.time(),
                endpoint=outcome.endpoint,
                output=side.text,
                finish_reason=side.finish_reason,
                messages=tuple(messages) if isinstance(messages, list) else None,
                prompt=prompt if isinstance(prompt, str) else None,
                schema_verdict=verdict,
                refusal=side.refusal,
                latency_s=side.latency_s,
                tenant=caller.tenant.name if caller is not None else None,
                key_id=caller.key_id if caller is not None else None,
                client_request_id=outcome.client_request_id,
                training=caller.tenant.training if caller is not None else "allow",
                stable=served,
                pair_flags=flags,
            )
        )

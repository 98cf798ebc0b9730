"""After an answer: request metrics and the rollout analysis' tallies, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.analysis import RequestOutcome, RolloutRecorder
from gateway.contracts import Verdict
from gateway.routing import Target
from monitoring import metrics

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


class OutcomeRecorder:
    """Turns outcomes into metrics and rollout tallies."""

    def __init__(self, rollouts: RolloutRecorder) -> None:
        self._rollouts = rollouts

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
        if target.rollout is not None and target.rollout.candidate is not None:
            schema_valid = None if outcome.verdict is None else outcome.verdict.ok
            self._rollouts.record(
                target.rollout,
                target.arm,
                RequestOutcome(outcome.status, outcome.latency_s, schema_valid=schema_valid),
            )

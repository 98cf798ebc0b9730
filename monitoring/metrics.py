"""Every Prometheus metric Turnout exports, defined once (the only module-level singletons).

Labels come from a small fixed set whose values come from the config, never from client text:
`route` (a configured route, or "unknown"), `version` (an adapter version such as
"support-triage@v3", or "base"), `arm` ("stable" or "candidate"), `backend` (a configured
backend URL), `result`, `kind`, `worker` (a worker process's index, 0 to `server.workers` - 1).

With several worker processes (`server.workers`), every value lives in a file per process
(prometheus_client's multiprocess mode) and `/metrics` sums the counters and histograms of all
of them; each gauge says how its workers' values combine (`multiprocess_mode`, ignored with
one process).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
# Adapter loads: a local LoRA loads in tens of milliseconds, a remote one in tens of seconds.
LOAD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

ROUTE_LABELS = ("route", "version", "arm")

# --- the data plane -------------------------------------------------------------------------
REQUESTS = Counter(
    "turnout_requests_total",
    "Inference requests answered, by route, adapter version, arm and HTTP status.",
    [*ROUTE_LABELS, "status"],
)
REQUEST_DURATION = Histogram(
    "turnout_request_duration_seconds",
    "Time from the request's arrival to the last byte of its answer.",
    ROUTE_LABELS,
    buckets=LATENCY_BUCKETS_S,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "turnout_time_to_first_token_seconds",
    "Streams only: time from the request's arrival to the first content chunk sent.",
    ROUTE_LABELS,
    buckets=LATENCY_BUCKETS_S,
)
PROMPT_TOKENS = Counter(
    "turnout_prompt_tokens_total",
    "Prompt tokens of answered requests, as the backend counted them.",
    ROUTE_LABELS,
)
COMPLETION_TOKENS = Counter(
    "turnout_completion_tokens_total",
    "Completion tokens of answered requests, as the backend counted them.",
    ROUTE_LABELS,
)
UPSTREAM_ERRORS = Counter(
    "turnout_upstream_errors_total",
    "Failures talking to a backend, by kind (unavailable, timeout, status).",
    ["backend", "kind"],
)
STREAMS_CUT_SLOW_CLIENT = Counter(
    "turnout_streams_cut_slow_client_total",
    "Streams cut because the client read nothing for `timeouts.client_stall_s`.",
    ROUTE_LABELS,
)
WORKER_CONNECTIONS = Counter(
    "turnout_worker_connections_total",
    "Client connections accepted, by the worker process that accepted them (server.workers).",
    ["worker"],
)
GC_PAUSE = Histogram(
    "turnout_gc_pause_seconds",
    "Garbage collections of a gateway process, by generation (0, 1, 2): how long each held its"
    " event loop (every stream's next event waits that long).",
    ["generation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
)
BACKEND_UP = Gauge(
    "turnout_backend_up",
    "1 when the backend answered its last health probe, else 0.",
    ["backend"],
    multiprocess_mode="livemin",
)

# --- output contracts -----------------------------------------------------------------------
SCHEMA_VALIDATIONS = Counter(
    "turnout_schema_validations_total",
    "Answers checked against the route's JSON Schema, by result (valid, invalid, truncated).",
    [*ROUTE_LABELS, "result"],
)
SCHEMA_RETRIES = Counter(
    "turnout_schema_retries_total",
    "Re-asks after an answer broke the route's schema.",
    ROUTE_LABELS,
)
SCHEMA_RETRY_DURATION = Histogram(
    "turnout_schema_retry_duration_seconds",
    "Extra time a request spent on schema retries.",
    ROUTE_LABELS,
    buckets=LATENCY_BUCKETS_S,
)

# --- answer signals -------------------------------------------------------------------------
REFUSAL_CHECKS = Counter(
    "turnout_refusal_checks_total",
    "Answers checked by the refusal detector, by detector (name:version) and result "
    "(refusal, answer).",
    [*ROUTE_LABELS, "detector", "result"],
)
DRIFT_SCORE = Gauge(
    "turnout_drift_score",
    "Divergence of live inputs from the reference profile, by feature and statistic (psi, js).",
    ["route", "version", "feature", "statistic"],
    multiprocess_mode="livemostrecent",
)
SEMANTIC_DRIFT_MMD = Gauge(
    "turnout_semantic_drift_mmd",
    "MMD² of live prompt embeddings against the reference window, and its permutation "
    "threshold (statistic: mmd2, threshold: the shuffled MMD² it must exceed for a "
    "permutation p-value at most alpha); drifted when mmd2 > threshold.",
    ["route", "version", "statistic"],
    multiprocess_mode="livemostrecent",
)
SEMANTIC_DRIFT_PROMPTS = Counter(
    "turnout_semantic_drift_prompts_total",
    "Prompts offered to the semantic-drift windows, by result (queued, dropped: the signals "
    "worker's queue was full, embedded: added to a window).",
    ["route", "version", "result"],
)

# --- rollouts -------------------------------------------------------------------------------
ROLLOUT_WEIGHT = Gauge(
    "turnout_rollout_weight_percent",
    "Share of traffic each arm of a route receives, in percent.",
    ["route", "arm"],
    multiprocess_mode="livemostrecent",
)
ROLLOUT_DECISIONS = Counter(
    "turnout_rollout_decisions_total",
    "Rollout changes, by decision (start, step, promote, rollback, pause, resume) and cause.",
    ["route", "decision", "cause"],
)
SHADOW_SHARE = Gauge(
    "turnout_shadow_share_percent",
    "Share of a route's requests copied to its shadowed candidate, as configured, in percent.",
    ["route"],
    multiprocess_mode="livemostrecent",
)
SHADOW_REQUESTS = Counter(
    "turnout_shadow_requests_total",
    "Shadow copies by result: compared, dropped_budget (own budget full), dropped_load (no free"
    " backend slot), preempted (a real request took its slot), failed, too_large.",
    ["route", "result"],
)
SHADOW_SIGNAL_EVENTS = Counter(
    "turnout_shadow_signal_events_total",
    "Compared pairs by signal and arm where that arm was bad (trials: every checked pair).",
    ["route", "signal", "arm", "result"],
)
SHADOW_AGREEMENT = Histogram(
    "turnout_shadow_agreement_ratio",
    "Per compared pair: agreement of the candidate's answer with stable's (1: the same), by"
    " kind (structured: exact, json: share of equal fields, text: word similarity).",
    ["route", "kind"],
    buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
)
SHADOW_VERDICT = Gauge(
    "turnout_shadow_analysis_state",
    "A shadow's latest analysis verdict: 1 for the action in force (continue, rollback meaning"
    " reject, promote_step meaning promote to canary), 0 for the others.",
    ["route", "action"],
    multiprocess_mode="livemostrecent",
)
CONFIG_RELOADS = Counter(
    "turnout_config_reloads_total",
    "Attempts to apply a changed config file, by result (applied, rejected).",
    ["result"],
)
STATE_STORE_UP = Gauge(
    "turnout_state_store_up",
    "1 when the shared rollout state store answers, 0 while serving the last known table.",
    multiprocess_mode="livemin",
)

# --- adapters on the backends ---------------------------------------------------------------
ADAPTER_LOADS = Counter(
    "turnout_adapter_loads_total",
    "Adapter loads onto a backend, by result (loaded, failed).",
    ["backend", "result"],
)
ADAPTER_UNLOADS = Counter(
    "turnout_adapter_unloads_total",
    "Adapters unloaded from a backend because no route uses them any more.",
    ["backend"],
)
ADAPTER_LOAD_DURATION = Histogram(
    "turnout_adapter_load_duration_seconds",
    "Time vLLM took to load one adapter.",
    ["backend"],
    buckets=LOAD_BUCKETS_S,
)
ADAPTERS_RESIDENT = Gauge(
    "turnout_adapters_resident",
    "Adapter versions Turnout has loaded on a backend.",
    ["backend"],
    multiprocess_mode="livemostrecent",
)
ADAPTERS_ROUTED = Gauge(
    "turnout_adapters_routed",
    "Adapter versions some route can send traffic to.",
    multiprocess_mode="livemostrecent",
)
ADAPTER_CAPACITY = Gauge(
    "turnout_adapter_capacity",
    "Adapters a backend can keep in memory (vLLM's --max-cpu-loras).",
    ["backend"],
    multiprocess_mode="livemostrecent",
)
ADAPTER_PLACEMENT_LOADS = Counter(
    "turnout_adapter_placement_loads_total",
    "Demand placement's loads, by reason (first_use, replica, warm, reload) or failed.",
    ["backend", "reason"],
)
ADAPTER_EVICTIONS = Counter(
    "turnout_adapter_evictions_total",
    "Versions placement took off a backend, by reason (capacity, unrouted, lost: vLLM said 404, "
    "backend_lost: its list of adapters no longer names it).",
    ["backend", "reason"],
)
ADAPTER_COLD_START_WAIT = Histogram(
    "turnout_adapter_cold_start_wait_seconds",
    "Time a request waited for its adapter version to load before it was sent.",
    ["backend"],
    buckets=LOAD_BUCKETS_S,
)
ADAPTER_PLACEMENT_REQUESTS = Counter(
    "turnout_adapter_placement_requests_total",
    "Requests placement sent on: hit (version resident), cold (waited for a load), or refused "
    "(503 adapter_loading: full, queue_full, deadline, load_failed).",
    ["result"],
)
ADAPTER_PLACEMENT_IMBALANCE = Gauge(
    "turnout_adapter_placement_imbalance_ratio",
    "Most in-flight requests on one backend over the mean across backends (1 is even).",
    multiprocess_mode="livemax",
)
ADAPTER_PLACEMENT_ALONE = Counter(
    "turnout_adapter_placement_alone_total",
    "Placement steps taken without the other replicas because Redis could not be reached, "
    "by step (lease, held, in_use, record, mark).",
    ["step"],
)
ADAPTER_PLACEMENT_QUEUED = Gauge(
    "turnout_adapter_placement_queued",
    "Requests waiting in the backend's own queue that are not this gateway's, as placement "
    "weighs them (from vLLM's vllm:num_requests_waiting; 0 while unknown or stale).",
    ["backend"],
    multiprocess_mode="livemostrecent",
)
BACKEND_METRICS_SCRAPES = Counter(
    "turnout_backend_metrics_scrapes_total",
    "Scrapes of a backend's /metrics, by result (ok, failed; shared: another worker's reading).",
    ["backend", "result"],
)

# --- capture --------------------------------------------------------------------------------
CAPTURE_RECORDS = Counter(
    "turnout_capture_records_total",
    "Capture records offered to the sink, by result (written, dropped, skipped; erased: "
    "its tenant's deletion came after it).",
    ["result"],
)
CAPTURE_QUEUE_DEPTH = Gauge(
    "turnout_capture_queue_depth",
    "Capture records waiting in memory to be written.",
    multiprocess_mode="livesum",
)

# --- review queue ---------------------------------------------------------------------------
REVIEW_ITEMS = Counter(
    "turnout_review_items_total",
    "Answers offered to the review queue, by result (queued, over_budget).",
    [*ROUTE_LABELS, "result"],
)
REVIEW_QUEUE_DEPTH = Gauge(
    "turnout_review_queue_depth",
    "Review items not judged yet (pending or skipped).",
    ROUTE_LABELS,
    multiprocess_mode="livemostrecent",
)
REVIEW_JUDGEMENTS = Counter(
    "turnout_review_judgements_total",
    "Reviewers' actions on queued answers, by result (good, bad, skipped).",
    [*ROUTE_LABELS, "result"],
)

"""The YAML configuration: one pydantic model tree, loading, and errors that name the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters.names import ADAPTER_REF_PATTERN, NAME_PATTERN
from gateway.config_paths import CONFIG_FOLDER, ConfigPath
from gateway.config_yaml import load_yaml
from gateway.contracts.contract import (
    OnInvalid,
    RequestSchemaPolicy,
    SchemaRejected,
    StreamValidation,
    check_schema,
)
from gateway.environment import Environment
from gateway.errors import ConfigError
from gateway.gc_pause import gc_paused
from gateway.rollouts.model import (
    DEFAULT_MIN_REQUESTS_PER_STEP,
    DEFAULT_MIN_SECONDS_PER_STEP,
    DEFAULT_SHADOW_MIN_PAIRS,
    DEFAULT_SHADOW_PERCENT,
    DEFAULT_STEPS,
)
from gateway.shadow.settings import ShadowCategory, ShadowSettings
from gateway.surface.config import RequestsConfig
from training.capture import CaptureSettings
from training.review.policy import ReviewPolicy

RouteName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
AdapterRef = Annotated[str, StringConstraints(pattern=ADAPTER_REF_PATTERN)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(StrictModel):
    """Where the gateway listens and what it accepts."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="413 above this")
    admin_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /admin on this port only (env TURNOUT_ADMIN_PORT); None: on `port`",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics on this port of its own; None: on the admin listener when "
        "`admin_port` is set (docs/security.md)",
    )
    public_metrics: bool | None = Field(
        default=None,
        description="also serve /metrics on `port`, to anyone who reaches it; None: only when "
        "no tenant keys (auth.keys_file) and neither admin_port nor metrics_port are set",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="gateway processes for this replica, sharing its ports (SO_REUSEPORT); "
        "above 1 needs state.redis_url (docs/performance.md)",
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        ports = [p for p in (self.port, self.admin_port, self.metrics_port) if p]  # 0: any free
        if len(ports) != len(set(ports)):
            raise ValueError("port, admin_port and metrics_port must differ")
        return self


class BackendConfig(StrictModel):
    """One vLLM server of the shared base model."""

    url: str = Field(description="http(s)://host:port of a vLLM OpenAI-compatible server")

    @field_validator("url")
    @classmethod
    def _http_origin(cls, url: str) -> str:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?", url):
            raise ValueError("must be an http(s) origin such as http://127.0.0.1:8000 (no path)")
        return url.rstrip("/")


class TimeoutsConfig(StrictModel):
    """Upstream time limits; past them the client gets 504 (or an SSE error once streaming)."""

    connect_s: float = Field(default=5.0, gt=0)
    response_s: float = Field(
        default=600.0, gt=0, description="whole answer, or the stream's headers"
    )
    stream_idle_s: float = Field(default=60.0, gt=0, description="longest gap between chunks")
    client_stall_s: float = Field(
        default=10.0, gt=0, description="longest a streaming client may leave events unread"
    )


# The ranks vLLM's --max-lora-rank accepts (vllm/config/lora.py, MaxLoRARanks, vLLM 0.32).
MaxLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]


class AdaptersConfig(StrictModel):
    """The adapter registry, and what the backends accept (their vLLM LoRA flags)."""

    store: ConfigPath = Field(
        default="./.turnout/demo/adapters",
        validate_default=True,
        description="a folder or an fsspec URL such as s3://bucket/prefix (credentials from env)",
    )
    backend_path: str | None = Field(
        default=None,
        description="the store's folder as the vLLM servers see it; None: the store itself "
        "(which must then be a local folder)",
    )
    max_lora_rank: MaxLoraRank = Field(
        default=16, description="vLLM --max-lora-rank: one of the ranks vLLM accepts"
    )
    max_loras: int = Field(default=4, gt=0, description="vLLM --max-loras: adapters per batch")
    max_cpu_loras: int | None = Field(
        default=None, gt=0, description="vLLM --max-cpu-loras: adapters in memory; None: max_loras"
    )
    reconcile_interval_s: float = Field(
        default=2.0, gt=0, description="how often backends are checked for missing adapters"
    )
    metrics_scrape_s: float = Field(
        default=1.0,
        ge=0.1,
        le=60.0,
        description="demand: how often each backend's /metrics is read (queue depth, slots); "
        "a reading older than three of these is dropped",
    )
    placement: Literal["everywhere", "demand"] = Field(
        default="everywhere",
        description="everywhere: every routed version on every backend (at most max_cpu_loras "
        "versions); demand: any number, each loaded where and when traffic needs it",
    )
    eviction: Literal["lru", "lfu"] = Field(
        default="lfu",
        description="demand: which resident version a full backend gives up (least frequently "
        "or least recently used; lfu measured fewer loads in `turnout bench fleet`)",
    )
    replicate_at: int = Field(
        default=4, gt=0, description="demand: in-flight requests per holder that add a replica"
    )
    load_wait_s: float = Field(
        default=30.0, gt=0, description="demand: longest a request waits for its adapter's load"
    )
    max_load_waiters: int = Field(
        default=256, gt=0, description="demand: requests waiting for loads at once; more get 503"
    )

    @model_validator(mode="after")
    def _cpu_holds_a_batch(self) -> AdaptersConfig:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras "
                f"({self.max_loras}): vLLM keeps every adapter of a batch in CPU memory too"
            )
        return self

    @property
    def capacity(self) -> int:
        """How many adapter versions the backends can keep resident."""
        return self.max_cpu_loras or self.max_loras


class RouteConfig(StrictModel):
    """What a client-visible model name serves: versions, rollout, output contract."""

    stable: AdapterRef | None = Field(
        default=None, description="adapter version `name@version`; omit for the bare base model"
    )
    # --- a rollout: a candidate version beside stable ------------------------------------------
    candidate: AdapterRef | None = Field(default=None, description="the version being rolled out")
    mode: Literal["canary", "ab", "shadow"] = Field(
        default="canary",
        description="canary: stepped and analysed; ab: a fixed split; shadow: compared, not served",
    )
    weight: float | None = Field(
        default=None, gt=0, le=100, description="candidate share in percent (ab, or one step)"
    )
    steps: list[float] = Field(
        default_factory=lambda: list(DEFAULT_STEPS), description="canary weights, in percent"
    )
    min_requests_per_step: int = Field(default=DEFAULT_MIN_REQUESTS_PER_STEP, gt=0)
    min_seconds_per_step: float = Field(default=DEFAULT_MIN_SECONDS_PER_STEP, ge=0)
    shadow_percent: float = Field(
        default=DEFAULT_SHADOW_PERCENT, gt=0, le=100, description="shadow: share copied, percent"
    )
    shadow_min_pairs: int = Field(
        default=DEFAULT_SHADOW_MIN_PAIRS, gt=0, description="shadow: pairs before promotion"
    )
    auto_promote: bool | None = Field(
        default=None, description="shadow: promote to canary automatically (default: no)"
    )
    shadow_category: ShadowCategory | None = Field(
        default=None, description="shadow: test these request categories apart too"
    )
    # --- an output contract -------------------------------------------------------------------
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="JSON Schema (draft 2020-12) every answer must meet: inline, or a file path "
        "relative to the config file",
    )
    on_invalid: OnInvalid = Field(
        default="retry", description="retry (then error), error (502), or flag (pass through)"
    )
    max_retries: int = Field(default=1, ge=0, le=5)
    max_tokens: int | None = Field(
        default=None, gt=0, description="ceiling on a request's max_tokens (else limits.max_tokens)"
    )
    stream_validation: StreamValidation = Field(
        default="final",
        description="final: stream as it comes, verdict in the last event; buffer: validate "
        "(and retry) before the first byte",
    )
    request_schema: RequestSchemaPolicy = Field(
        default="reject",
        description="a request whose response_format this schema cannot keep: reject (400 "
        "schema_conflict), ignore (decode with this schema, headers say so), or enforce_both "
        "(decode with this schema, validate answers against both)",
    )
    requests: RequestsConfig | None = Field(
        default=None, description="this route's fields, media and bounds: replaces the keys it sets"
    )
    review: ReviewPolicy = Field(
        default_factory=ReviewPolicy,
        description="what goes to the human review queue (training/review/policy.py)",
    )
    warm: bool = Field(
        default=False,
        description="adapters.placement demand: keep this route's versions resident always",
    )

    @field_validator("json_schema")
    @classmethod
    def _bounded_valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                check_schema(schema)
            except SchemaRejected as error:
                raise ValueError(f"invalid schema: {error}") from None
        return schema

    @model_validator(mode="after")
    def _candidate_needs_stable(self) -> RouteConfig:
        if self.candidate is not None and self.candidate == self.stable:
            raise ValueError("candidate must differ from stable")
        return self


class StateConfig(StrictModel):
    """Where runtime state lives: rollout state and the audit log, shared through Redis or not."""

    dir: ConfigPath = Field(
        default="./.turnout/state",
        validate_default=True,
        description="rollout state file and audit log (one process)",
    )
    redis_url: str | None = Field(
        default=None,
        description="share rollout state between gateway replicas (env TURNOUT_REDIS_URL)",
    )
    analysis_interval_s: float = Field(default=1.0, gt=0, description="canary analysis period")
    review_verdicts_in_analysis: bool = Field(
        default=False,
        description="reviewers' bad/good verdicts are a canary signal too (docs/review.md)",
    )
    config_poll_s: float = Field(default=1.0, gt=0, description="how often the file is checked")


class AuthConfig(StrictModel):
    """API keys: tenants and the routes granted to them, operators apart (docs/security.md)."""

    keys_file: ConfigPath | None = Field(
        default=None,
        description="tenants' key hashes and routes (env TURNOUT_API_KEYS_FILE); "
        "None: no authentication (the local embedded default)",
    )
    admin_keys_file: ConfigPath | None = Field(
        default=None,
        description="operators' key hashes for /admin (env TURNOUT_ADMIN_KEYS_FILE); "
        "None: the admin API refuses every call",
    )


class LimitsConfig(StrictModel):
    """What one request and one tenant may ask for."""

    requests_per_minute: int | None = Field(default=None, gt=0, description="per tenant")
    tokens_per_minute: int | None = Field(default=None, gt=0, description="per tenant")
    default_max_tokens: int = Field(
        default=1024, gt=0, description="charged up front when a request sets no max_tokens"
    )
    max_messages: int = Field(default=256, gt=0, description="messages in one chat request")
    max_tokens: int | None = Field(
        default=4096,
        gt=0,
        description="ceiling on max_tokens (a route may set its own); None: no ceiling",
    )


class AdmissionConfig(StrictModel):
    """Per backend: requests in flight and waiting; past the queue, 503 at once."""

    max_concurrent: int = Field(default=64, gt=0)
    max_queued: int = Field(default=256, ge=0)
    queue_timeout_s: float = Field(default=10.0, gt=0)


class BreakerConfig(StrictModel):
    """Per-backend circuit breakers and the retry budget for failover."""

    window_s: int = Field(default=10, ge=1)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=10, ge=1)
    consecutive_failures: int = Field(default=5, ge=1)
    cool_down_s: float = Field(default=5.0, gt=0)
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    retry_min_per_s: float = Field(default=1.0, ge=0)


class DriftSettings(StrictModel):
    """Input drift per route and version (monitoring/drift.py)."""

    reference_size: int = Field(default=1000, gt=0, description="first prompts kept as reference")
    window_size: int = Field(default=1000, gt=0, description="live prompts compared with it")
    min_window: int = Field(default=200, gt=0, description="prompts before a score is published")
    refresh_s: float = Field(default=15.0, gt=0, description="how often scores are recomputed")


class SemanticDriftSettings(StrictModel):
    """Semantic drift per route and version (monitoring/semantic_feed.py); off by default."""

    enabled: bool = Field(
        default=False,
        description="embed prompts on the signals worker (signals extra) and compare each "
        "route and version's live window with its reference by MMD",
    )
    window: int = Field(default=500, ge=10, description="prompts in the reference and live windows")
    refresh_s: float = Field(default=60.0, gt=0, description="how often the tests run")


class RefusalJudgeSettings(StrictModel):
    """The judge detector: a route asked to grade each answer with a rubric (docs/monitoring.md)."""

    route: RouteName = Field(description="the route (adapter or base model) that judges")
    url: str | None = Field(
        default=None,
        description="the OpenAI-compatible endpoint serving `route`; None: this gateway's listener",
    )
    rubric: str | None = Field(
        default=None,
        description="the system prompt; it must ask for REFUSAL or ANSWER as the first word "
        "(None: monitoring.refusal_judge.RUBRIC)",
    )
    cache_size: int = Field(default=10_000, ge=0, description="verdicts kept, by answer digest")
    timeout_s: float = Field(default=30.0, gt=0)
    max_concurrent: int = Field(
        default=8,
        ge=1,
        le=16,
        description="calls to the judge in flight at once, per worker (the signals worker takes "
        "at most 16 answers a batch, so more would never be used)",
    )
    api_key_env: str | None = Field(
        default=None, description="environment variable holding the key the judge calls with"
    )


class MonitoringConfig(StrictModel):
    """Signals computed from answers and inputs."""

    drift: DriftSettings = DriftSettings()
    signals_per_second: int = Field(
        default=200,
        gt=0,
        description="answers a second given refusal, drift and capture checks; past it, a "
        "sample (failed answers are always checked)",
    )
    refusal_detector: Literal["phrase", "learned", "judge", "cascade", "cascade-judge"] = Field(
        default="phrase",
        description="learned: judge answers with the signals extra's encoder and trained head, "
        "on a worker thread with a bounded queue (docs/monitoring.md); judge: ask "
        "`refusal_judge.route`, on the same worker; cascade: an n-gram model (then static token "
        "embeddings, when their band decides any) decides the clear answers, the encoder's "
        "first 6 layers and their head the rest, on the same worker; cascade-judge: the same "
        "cheap stages, and `refusal_judge.route` asked for the rest",
    )
    refusal_judge: RefusalJudgeSettings | None = None
    semantic_drift: SemanticDriftSettings = SemanticDriftSettings()

    @model_validator(mode="after")
    def _judge_has_a_route(self) -> MonitoringConfig:
        if self.refusal_detector in ("judge", "cascade-judge") and self.refusal_judge is None:
            raise ValueError(
                f"monitoring.refusal_detector is {self.refusal_detector}: "
                "set monitoring.refusal_judge.route"
            )
        return self


class EmbeddedConfig(StrictModel):
    """The local vLLM that `turnout up` starts (ignored by `turnout serve`)."""

    model: ConfigPath = Field(default="./.turnout/demo/base", validate_default=True)
    dtype: str | None = Field(
        default=None, description="None: float32 on the CPU build of vLLM, auto on CUDA"
    )
    gpu_memory_utilization: float = Field(default=0.25, gt=0, le=1)
    max_model_len: int | None = Field(default=None, gt=0)
    startup_timeout_s: float = Field(default=300.0, gt=0)
    extra_args: list[str] = Field(default_factory=list)


class TurnoutConfig(StrictModel):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    base_model: RouteName = Field(default="tiny", description="the name vLLM serves the base under")
    backends: list[BackendConfig] = Field(default_factory=list)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    adapters: AdaptersConfig = Field(default_factory=dict, validate_default=True)
    routes: dict[RouteName, RouteConfig] = Field(default_factory=dict)
    state: StateConfig = Field(default_factory=dict, validate_default=True)
    monitoring: MonitoringConfig = MonitoringConfig()
    auth: AuthConfig = Field(default_factory=dict, validate_default=True)
    limits: LimitsConfig = LimitsConfig()
    admission: AdmissionConfig = AdmissionConfig()
    breaker: BreakerConfig = BreakerConfig()
    capture: CaptureSettings = Field(
        default_factory=lambda: {"path": "./.turnout/state/captures.db"},
        validate_default=True,
        description="what the flywheel captures (training/capture.py)",
    )
    embedded: EmbeddedConfig = Field(default_factory=dict, validate_default=True)
    shadow: ShadowSettings = Field(
        default_factory=ShadowSettings, description="shadow rollouts' own budget (gateway/shadow)"
    )
    requests: RequestsConfig = Field(
        default_factory=RequestsConfig,
        description="what one request may contain: fields, media, bounds (routes may override)",
    )

    @model_validator(mode="after")
    def _route_requests_fit_defaults(self) -> TurnoutConfig:
        for name, route in self.routes.items():
            try:
                self.requests.overridden_by(route.requests)
            except ValidationError as error:
                problem = describe_validation_error(error).removeprefix("(top level): ")
                raise ValueError(f"routes.{name}.requests with the defaults: {problem}") from None
        return self


def _key_path(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the dotted key it is about."""
    lines = []
    for problem in error.errors():
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        elif problem["type"] == "value_error":
            message = str(problem.get("ctx", {}).get("error", message))
        elif problem["type"] == "string_pattern_mismatch":
            message = (
                f"{problem['input']!r} is not a valid name: letters, digits, '.', '_', '-'"
                " (and one '@' between an adapter's name and version)"
            )
        lines.append(f"{_key_path(problem['loc'])}: {message}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "config", folder: Path | None = None) -> TurnoutConfig:
    """Validate an already-parsed YAML document; relative paths resolve against `folder`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return TurnoutConfig.model_validate(raw, context={CONFIG_FOLDER: folder})
    except ValidationError as error:
        raise ConfigError(f"{source}:\n{describe_validation_error(error)}") from None


def _with_schema_files(raw: Any, folder: Path, source: Path) -> Any:
    """Routes whose `schema` names a file get that file's contents (JSON or YAML).

    The file must lie inside the config file's folder: a config cannot read arbitrary files.
    """
    routes = raw.get("routes") if isinstance(raw, dict) else None
    if not isinstance(routes, dict):
        return raw
    resolved = {}
    for name, route in routes.items():
        if isinstance(route, dict) and isinstance(route.get("schema"), str):
            file = (folder / route["schema"]).resolve()
            where = f"{source}: routes.{name}.schema"
            if not file.is_relative_to(folder):
                raise ConfigError(f"{where}: {route['schema']} is outside {folder}")
            try:
                route = {**route, "schema": yaml.safe_load(file.read_text(encoding="utf-8"))}
            except OSError as error:
                raise ConfigError(f"{where}: cannot read {file}: {error.strerror}") from None
            except yaml.YAMLError as error:
                raise ConfigError(f"{where}: {file} is not JSON or YAML: {error}") from None
        resolved[name] = route
    return {**raw, "routes": resolved}


@gc_paused()  # 10,000 routes: nothing their parse allocates is garbage
def load_config(path: Path) -> TurnoutConfig:
    """Read and validate a YAML config file; relative paths in it are relative to the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    try:
        raw = load_yaml(text)  # safe_load's values, 1.8x faster on 10,000 routes (config_yaml.py)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    folder = path.resolve().parent
    return parse_config(_with_schema_files(raw, folder, path), source=str(path), folder=folder)


def with_environment(config: TurnoutConfig, env: Mapping[str, str] | None = None) -> TurnoutConfig:
    """The config with what the environment sets (`gateway.environment` lists the variables)."""
    found = Environment.read(env)
    updates: dict[str, StrictModel] = {}
    if found.redis_url:
        updates["state"] = config.state.model_copy(update={"redis_url": found.redis_url})
    if found.admin_port is not None:
        updates["server"] = config.server.model_copy(update={"admin_port": found.admin_port})
    files = {"keys_file": found.api_keys_file, "admin_keys_file": found.admin_keys_file}
    if any(files.values()):
        set_files = {key: value for key, value in files.items() if value}
        updates["auth"] = config.auth.model_copy(update=set_files)
    return config.model_copy(update=updates) if updates else config


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors."""
    schema = TurnoutConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Turnout configuration"
    return schema

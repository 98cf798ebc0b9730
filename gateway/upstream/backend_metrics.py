"""What each backend's own `/metrics` says of its load: queue depth, running requests, LoRA slots.

vLLM exports, per engine, `vllm:num_requests_waiting` and `vllm:num_requests_running` (every
client's requests, not only the gateway's), and `vllm:lora_requests_info`, a gauge whose labels
carry the LoRA state (`max_lora`: its `--max-loras`; `running_lora_adapters`,
`waiting_lora_adapters`: comma-separated names) and whose value is the time the series was
last set; a new label set makes a new series, so the newest value is the current state (the
Kubernetes inference extension reads it the same way). Only these lines are parsed, by our own
reader of the Prometheus text format, so the base install needs nothing more.

`BackendMetrics.watch` scrapes every backend every `interval_s` off the request path, over the
same `UpstreamClient` (Turnout's HTTP/1.1 pool) as the health probe. A missing series is
None (an older vLLM, a simulator); a failed or slow scrape keeps the last reading with its
age, and a reading older than `stale_after` intervals is no longer used. Each fresh reading
goes to `on_reading` (placement's queue depth and discovered capacity). With an `exchange`
(`shared_readings.py`, through Redis), one worker of all replicas reads each backend per
interval and the others take its reading.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import TurnoutError
from monitoring import metrics

log = logging.getLogger("turnout.upstream")

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
LORA_INFO = "vllm:lora_requests_info"
_WANTED = frozenset({WAITING, RUNNING, LORA_INFO})


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of the text format: a series' name, its labels and its value."""

    name: str
    labels: Mapping[str, str]
    value: float


def _labels(text: str, start: int) -> tuple[dict[str, str], int]:
    """The `{k="v",...}` block starting at `text[start]`, and the index after its `}`."""
    labels: dict[str, str] = {}
    i = start + 1
    while True:
        while i < len(text) and text[i] in " ,":
            i += 1
        if i >= len(text):
            raise ValueError("unterminated label set")
        if text[i] == "}":
            return labels, i + 1
        eq = text.index("=", i)
        key = text[i:eq].strip()
        if text[eq + 1] != '"':
            raise ValueError(f"label {key} has no quoted value")
        value: list[str] = []
        j = eq + 2
        while text[j] != '"':
            if text[j] == "\\":
                j += 1
                value.append({"n": "\n", "\\": "\\", '"': '"'}.get(text[j], "\\" + text[j]))
            else:
                value.append(text[j])
            j += 1
        labels[key] = "".join(value)
        i = j + 1


def parse_samples(text: str, names: Iterable[str] = _WANTED) -> Iterator[Sample]:
    """The samples of the series named `names` in Prometheus text exposition format; other
    lines (and malformed ones, logged once per scrape by the caller's count) are skipped."""
    wanted = frozenset(names)
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if space < 0:
            continue
        name = line[:brace] if 0 <= brace < space else line[:space]
        if name not in wanted:
            continue
        try:
            if 0 <= brace < space:
                labels, end = _labels(line, brace)
            else:
                labels, end = {}, space
            value = float(line[end:].split()[0])  # a timestamp may follow
        except (ValueError, IndexError):
            continue
        yield Sample(name, labels, value)


@dataclass(frozen=True, slots=True)
class BackendReading:
    """One scrape of one backend; None where the series was missing."""

    waiting: int | None
    running: int | None
    max_lora: int | None  # vLLM's --max-loras
    running_adapters: frozenset[str] | None
    waiting_adapters: frozenset[str] | None


def _names(value: str) -> frozenset[str]:
    return frozenset(name for name in value.split(",") if name)


def read_backend(text: str) -> BackendReading:
    """The reading in a `/metrics` page: queue and running counts summed over engines, and the
    LoRA state of the newest `vllm:lora_requests_info` series."""
    waiting = running = None
    lora: Sample | None = None
    for sample in parse_samples(text):
        if not math.isfinite(sample.value):
            continue
        if sample.name == WAITING:
            waiting = (waiting or 0) + int(sample.value)
        elif sample.name == RUNNING:
            running = (running or 0) + int(sample.value)
        elif lora is None or sample.value >= lora.value:
            lora = sample
    if lora is None:
        return BackendReading(waiting, running, None, None, None)
    max_lora = lora.labels.get("max_lora", "")
    return BackendReading(
        waiting,
        running,
        int(max_lora) if max_lora.isdigit() and int(max_lora) > 0 else None,
        _names(lora.labels.get("running_lora_adapters", "")),
        _names(lora.labels.get("waiting_lora_adapters", "")),
    )


@dataclass(frozen=True, slots=True)
class Reading:
    reading: BackendReading
    at_s: float  # on the monotonic clock


class MetricsClient(Protocol):
    """The one call the scraper needs (`UpstreamClient.get`)."""

    async def get(self, backend: str, path: str, timeout_s: float) -> _Reply: ...


class _Reply(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...


class ReadingExchange(Protocol):
    """Readings shared between workers and replicas (`SharedReadings`)."""

    async def claim(self, backend: str, interval_s: float) -> bool: ...

    async def publish(self, backend: str, reading: BackendReading, keep_s: float) -> None: ...

    async def fetch(
        self, backend: str, max_age_s: float
    ) -> tuple[BackendReading, float] | None: ...

    async def close(self) -> None: ...


class BackendMetrics:
    """Each backend's latest `/metrics` reading, with its age; None once stale."""

    def __init__(
        self,
        backends: Iterable[str],
        *,
        interval_s: float = 1.0,
        stale_after: int = 3,
        on_reading: Callable[[str, BackendReading | None], None] | None = None,
        exchange: ReadingExchange | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or stale_after < 1:
            raise ValueError("interval_s > 0 and stale_after >= 1")
        self.backends = tuple(backends)
        self.interval_s = interval_s
        self.stale_after_s = stale_after * interval_s
        self._on_reading = on_reading
        self._exchange = exchange
        self._clock = clock
        self._latest: dict[str, Reading | None] = dict.fromkeys(self.backends)

    def record(self, backend: str, reading: BackendReading, age_s: float = 0.0) -> None:
        self._latest[backend] = Reading(reading, self._clock() - age_s)
        if self._on_reading is not None:
            self._on_reading(backend, reading)

    def latest(self, backend: str) -> BackendReading | None:
        """The last reading, if it is at most `stale_after` intervals old."""
        entry = self._latest.get(backend)
        if entry is None or self._clock() - entry.at_s > self.stale_after_s:
            return None
        return entry.reading

    def age_s(self, backend: str) -> float | None:
        entry = self._latest.get(backend)
        return None if entry is None else self._clock() - entry.at_s

    def expire(self) -> None:
        """Tell `on_reading` of each backend whose reading went stale (its queue unknown)."""
        for backend in self.backends:
            entry = self._latest.get(backend)
            if entry is not None and self.latest(backend) is None:
                self._latest[backend] = None
                if self._on_reading is not None:
                    self._on_reading(backend, None)

    async def scrape(self, client: MetricsClient, backend: str) -> bool:
        """One scrape of `backend`, within one interval; whether it gave a reading. With an
        exchange, only when this worker holds the interval's claim; else the reading its
        holder published (none yet: the last reading stands, ageing)."""
        if self._exchange is not None and not await self._exchange.claim(backend, self.interval_s):
            shared = await self._exchange.fetch(backend, self.stale_after_s)
            if shared is None:
                return False
            self.record(backend, *shared)
            metrics.BACKEND_METRICS_SCRAPES.labels(backend, "shared").inc()
            return True
        try:
            reply = await client.get(backend, "/metrics", self.interval_s)
        except (TurnoutError, OSError, TimeoutError) as error:
            log.debug("metrics scrape of %s failed: %s", backend, error)
            metrics.BACKEND_METRICS_SCRAPES.labels(backend, "failed").inc()
            return False
        if reply.status != 200:
            metrics.BACKEND_METRICS_SCRAPES.labels(backend, "failed").inc()
            return False
        reading = read_backend(reply.body.decode("utf-8", "replace"))
        self.record(backend, reading)
        metrics.BACKEND_METRICS_SCRAPES.labels(backend, "ok").inc()
        if self._exchange is not None:
            await self._exchange.publish(backend, reading, self.stale_after_s)
        return True

    async def close(self) -> None:
        if self._exchange is not None:
            await self._exchange.close()

    async def watch(self, client: MetricsClient) -> None:
        """Scrape every backend every `interval_s`, concurrently, until cancelled."""
        while True:
            await asyncio.gather(*(self.scrape(client, backend) for backend in self.backends))
            self.expire()
            await asyncio.sleep(self.interval_s)

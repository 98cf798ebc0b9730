"""One read of each backend's `/metrics` per interval for all workers and replicas, via Redis.

Every worker of every gateway replica keeps its own placement, and each wants every backend's
queue depth every `adapters.metrics_scrape_s`. Reading vLLM's `/metrics` is not free for vLLM:
its API server spends about 9 ms of CPU rendering the page (docs/adapters.md), in the process
that also relays every token. So with Redis, one reader a backend per interval: whoever sets
the claim key first (`SET NX PX`, expiring just before the next interval) reads the page and
publishes the parsed reading; the others take the published reading instead. A reading older
than the staleness window is not used. When Redis cannot be reached each worker reads for
itself, as without Redis (never an error).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.upstream.backend_metrics import BackendReading

log = logging.getLogger("turnout.upstream")

RETRY_AFTER_S = 1.0  # after a failed Redis call, read alone this long before trying again


def encode_reading(reading: BackendReading, at_s: float) -> bytes:
    def names(value: frozenset[str] | None) -> list[str] | None:
        return None if value is None else sorted(value)

    return json.dumps(
        {
            "waiting": reading.waiting,
            "running": reading.running,
            "max_lora": reading.max_lora,
            "running_adapters": names(reading.running_adapters),
            "waiting_adapters": names(reading.waiting_adapters),
            "at": at_s,
        }
    ).encode()


def decode_reading(data: bytes | str) -> tuple[BackendReading, float]:
    """The reading and when it was read (wall clock); ValueError or KeyError if malformed."""
    fields = json.loads(data)

    def count(value: object) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int):
            raise ValueError(f"not a count: {value!r}")
        return value

    def names(value: object) -> frozenset[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"not a list of names: {value!r}")
        return frozenset(value)

    reading = BackendReading(
        waiting=count(fields["waiting"]),
        running=count(fields["running"]),
        max_lora=count(fields["max_lora"]),
        running_adapters=names(fields["running_adapters"]),
        waiting_adapters=names(fields["waiting_adapters"]),
    )
    return reading, float(fields["at"])


class SharedReadings:
    """The claim to read a backend this interval, and the reading published by its reader."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "turnout",
        reader: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=1.0
        )
        self._prefix = f"{prefix}:backend-readings"
        self.reader = reader or uuid.uuid4().hex
        self._clock = clock
        self._down_until = 0.0

    def _reachable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, error: BaseException) -> None:
        if self._reachable():
            log.warning("shared backend readings (Redis) unreachable, reading alone: %s", error)
        self._down_until = time.monotonic() + RETRY_AFTER_S

    async def claim(self, backend: str, interval_s: float) -> bool:
        """Whether this worker reads `backend` now: it took the claim for this interval, or
        Redis cannot be reached. The claim expires a little before the next interval."""
        if not self._reachable():
            return True
        try:
            taken = await self._client.set(
                f"{self._prefix}:claim:{backend}",
                self.reader,
                nx=True,
                px=max(1, int(interval_s * 900)),
            )
        except (RedisError, OSError) as error:
            self._failed(error)
            return True
        return bool(taken)

    async def publish(self, backend: str, reading: BackendReading, keep_s: float) -> None:
        if not self._reachable():
            return
        try:
            await self._client.set(
                f"{self._prefix}:{backend}",
                encode_reading(reading, self._clock()),
                px=max(1, int(keep_s * 1000)),
            )
        except (RedisError, OSError) as error:
            self._failed(error)

    async def fetch(self, backend: str, max_age_s: float) -> tuple[BackendReading, float] | None:
        """The reading its reader published and its age in seconds, if any and at most
        `max_age_s` old."""
        if not self._reachable():
            return None
        try:
            data = await self._client.get(f"{self._prefix}:{backend}")
        except (RedisError, OSError) as error:
            self._failed(error)
            return None
        if data is None:
            return None
        try:
            reading, at_s = decode_reading(data)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("a malformed shared reading of %s was ignored: %s", backend, error)
            return None
        age_s = max(0.0, self._clock() - at_s)
        if age_s > max_age_s:
            return None
        return reading, age_s

    async def close(self) -> None:
        await self._client.aclose()

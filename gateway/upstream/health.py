"""What the periodic health probes last saw of each backend, and the readiness drawn from it.

The gateway probes every backend's `/health` on a timer (`BackendPool.watch_health`); nothing
else probes. `/readyz` reads the latest results through `Readiness`, which recomputes its
verdict at most once per `max_age_s`, so callers of `/readyz` never cause a probe, however
often they ask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One backend's answer to one periodic probe."""

    up: bool
    at_s: float  # on the monotonic clock


class BackendHealth:
    """Each backend's latest probe result; None until its first probe finishes."""

    def __init__(self, backends: Iterable[str], clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._latest: dict[str, ProbeResult | None] = {backend: None for backend in backends}

    def record(self, backend: str, up: bool) -> None:
        self._latest[backend] = ProbeResult(up, self._clock())

    def latest(self) -> Mapping[str, ProbeResult | None]:
        return dict(self._latest)

    def now_s(self) -> float:
        return self._clock()


def is_ready(latest: Mapping[str, ProbeResult | None], now_s: float, stale_after_s: float) -> bool:
    """Whether some backend answered its latest probe, and that probe is recent.

    A result older than `stale_after_s` does not count: if the probe loop stopped, the gateway
    stops calling itself ready instead of repeating the last answer forever.
    """
    return any(
        result is not None and result.up and now_s - result.at_s <= stale_after_s
        for result in latest.values()
    )


class Readiness:
    """The readiness verdict over `health`, cached for at most `max_age_s`."""

    def __init__(self, health: BackendHealth, stale_after_s: float, max_age_s: float = 1.0):
        if stale_after_s <= 0 or max_age_s < 0:
            raise ValueError("stale_after_s > 0 and max_age_s >= 0")
        self._health = health
        self._stale_after_s = stale_after_s
        self._max_age_s = max_age_s
        self._verdict = False
        self._computed_at_s: float | None = None

    def ready(self) -> bool:
        now_s = self._health.now_s()
        if self._computed_at_s is None or now_s - self._computed_at_s >= self._max_age_s:
            self._verdict = is_ready(self._health.latest(), now_s, self._stale_after_s)
            self._computed_at_s = now_s
        return self._verdict

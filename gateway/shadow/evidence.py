"""A shadow's paired counts: this process's tally, and every replica's pooled in Redis.

A tally is a flat set of integer counters per rollout (pairs, per signal and arm, the
discordant pairs, agreement sums), so pooling is the canary's: at each look a replica adds what
it counted since its previous look to one Redis hash per rollout (HINCRBY, in one transaction)
and analyses the sum (`gateway/rollouts/evidence.py` says why). A pair of a route with input
categories is counted twice: in the rollout's counters and in its category's (`category:<name>:`
before each name), so categories are pooled as the whole is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StateStoreUnavailable
from gateway.rollouts.analysis import BinomialCounts
from gateway.rollouts.evidence import EVIDENCE_TTL_S
from gateway.rollouts.model import Rollout
from gateway.shadow.compare import PAIR_SIGNALS, PairComparison

SCORE_SCALE = 1000  # agreement scores are summed in thousandths (Redis counts integers)


def category_prefix(category: str) -> str:
    """Where one input category's counters sit among a rollout's (`category:<name>:pairs`...)."""
    return f"category:{category}:"


@dataclass(frozen=True, slots=True)
class PairSnapshot:
    """A shadow rollout's counters at one moment; `within` narrows them to one input category.

    `categories` are the route's declared input categories (`other` last; none without a
    `shadow_category` setting): the analysis tests each apart, so it must know them all in
    advance, counted or not, to split alpha.
    """

    rollout_id: str
    fields: Mapping[str, int]
    categories: tuple[str, ...] = ()
    prefix: str = ""

    def get(self, name: str) -> int:
        return self.fields.get(self.prefix + name, 0)

    def within(self, category: str) -> PairSnapshot:
        """The same counters, for the pairs of one input category only."""
        return PairSnapshot(self.rollout_id, self.fields, (), category_prefix(category))

    @property
    def pairs(self) -> int:
        return self.get("pairs")

    def arm(self, signal: str, arm: str) -> BinomialCounts:
        return BinomialCounts(
            self.get(f"{signal}:{arm}:events"), self.get(f"{signal}:{arm}:trials")
        )

    def discordant(self, signal: str) -> tuple[int, int]:
        """(bad on the candidate alone, bad on stable alone) over pairs where both were checked."""
        return self.get(f"{signal}:candidate_only"), self.get(f"{signal}:stable_only")

    def agreement(self, kind: str) -> tuple[int, float, float]:
        """(pairs compared, share exactly equal, mean score) for one agreement kind."""
        pairs = self.get(f"agreement:{kind}:pairs")
        if not pairs:
            return 0, 0.0, 0.0
        exact = self.get(f"agreement:{kind}:exact") / pairs
        return pairs, exact, self.get(f"agreement:{kind}:score_milli") / SCORE_SCALE / pairs


_Names = dict[str, tuple[tuple[str, str], tuple[str, str], str, str]]
_NAMES: dict[str, _Names] = {}  # per prefix: each signal's counter names, built once


def _names(prefix: str) -> _Names:
    """A signal's counter names under `prefix`: (trials, events) per arm, then the two
    discordant ones (`candidate_only`, `stable_only`)."""
    names = _NAMES.get(prefix)
    if names is None:
        names = _NAMES[prefix] = {signal: _signal_names(prefix, signal) for signal in PAIR_SIGNALS}
    return names


def add_pair(counts: dict[str, int], comparison: PairComparison, prefix: str = "") -> None:
    """Count one compared pair into `counts` (under `prefix`: an input category's counters)."""
    get = counts.get
    name = f"{prefix}pairs"
    counts[name] = get(name, 0) + 1
    names = _names(prefix)
    for signal, (stable_bad, candidate_bad) in comparison.signals.items():
        stable_names, candidate_names, candidate_only, stable_only = names.get(signal) or (
            _signal_names(prefix, signal)
        )
        if stable_bad is not None:
            trials, events = stable_names
            counts[trials] = get(trials, 0) + 1
            counts[events] = get(events, 0) + stable_bad
        if candidate_bad is not None:
            trials, events = candidate_names
            counts[trials] = get(trials, 0) + 1
            counts[events] = get(events, 0) + candidate_bad
            if stable_bad is not None and stable_bad != candidate_bad:
                side = candidate_only if candidate_bad else stable_only
                counts[side] = get(side, 0) + 1
    agreed = comparison.agreement
    if agreed is not None:
        kind = f"{prefix}agreement:{agreed.kind}"
        for name, by in (
            (f"{kind}:pairs", 1),
            (f"{kind}:exact", int(agreed.exact)),
            (f"{kind}:score_milli", round(agreed.score * SCORE_SCALE)),
        ):
            counts[name] = get(name, 0) + by


def _signal_names(prefix: str, signal: str) -> tuple[tuple[str, str], tuple[str, str], str, str]:
    return (
        (f"{prefix}{signal}:stable:trials", f"{prefix}{signal}:stable:events"),
        (f"{prefix}{signal}:candidate:trials", f"{prefix}{signal}:candidate:events"),
        f"{prefix}{signal}:candidate_only",
        f"{prefix}{signal}:stable_only",
    )


def _no_categories(route: str) -> tuple[str, ...]:
    return ()


class PairTally:
    """This process's counters, one set per route for the shadow running on it.

    `categories` says a route's declared input categories (from its `shadow_category`
    setting, as the routing table in force has it), for the snapshots the analysis reads.
    """

    def __init__(self, categories: Callable[[str], tuple[str, ...]] = _no_categories) -> None:
        self._counts: dict[str, tuple[str, dict[str, int]]] = {}
        self.categories = categories

    def record(
        self, rollout: Rollout, comparison: PairComparison, category: str | None = None
    ) -> None:
        """Count a pair, into its input category's counters too when the route has them."""
        rollout_id, counts = self._counts.get(rollout.route, ("", {}))
        if rollout_id != rollout.rollout_id:
            counts = {}
            self._counts[rollout.route] = (rollout.rollout_id, counts)
        add_pair(counts, comparison)
        if category is not None:
            add_pair(counts, comparison, category_prefix(category))

    def snapshot(self, rollout: Rollout) -> PairSnapshot:
        rollout_id, counts = self._counts.get(rollout.route, ("", {}))
        if rollout_id != rollout.rollout_id:
            counts = {}
        return PairSnapshot(
            rollout.rollout_id,
            MappingProxyType(dict(counts)),
            self.categories(rollout.route),
        )


class PairEvidence(Protocol):
    """The paired counts a shadow is judged on."""

    async def snapshot(self, rollout: Rollout) -> PairSnapshot: ...

    async def close(self) -> None: ...


class PooledPairEvidence:
    """Several replicas: this one's counts added to, and read back with, everyone's in Redis."""

    def __init__(self, tally: PairTally, url: str, prefix: str = "turnout") -> None:
        self._tally = tally
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self._prefix = prefix
        self._added: dict[str, tuple[str, Mapping[str, int]]] = {}

    async def snapshot(self, rollout: Rollout) -> PairSnapshot:
        local = self._tally.snapshot(rollout).fields
        added_for, added = self._added.get(rollout.route, ("", {}))
        if added_for != rollout.rollout_id:
            added = {}
        key = f"{self._prefix}:shadow-evidence:{rollout.rollout_id}"
        pipeline = self._client.pipeline(transaction=True)
        for name, count in local.items():
            if since_last_look := count - added.get(name, 0):
                pipeline.hincrby(key, name, since_last_look)
        pipeline.expire(key, EVIDENCE_TTL_S)
        pipeline.hgetall(key)
        try:
            results = await pipeline.execute()
        except (RedisError, OSError) as error:
            raise StateStoreUnavailable(
                f"The pooled shadow evidence (Redis) cannot be reached: {error}."
            ) from None
        self._added[rollout.route] = (rollout.rollout_id, local)
        pooled: dict[bytes, bytes] = results[-1]
        fields = {name.decode(): int(value) for name, value in pooled.items()}
        return PairSnapshot(
            rollout.rollout_id, MappingProxyType(fields), self._tally.categories(rollout.route)
        )

    async def close(self) -> None:
        await self._client.aclose()


__all__ = ["PAIR_SIGNALS", "PairSnapshot", "PairTally", "add_pair"]

"""Where the canary analysis gets its counts: this process's, or every replica's, pooled in Redis.

With one gateway process the analysis reads the recorder's tally as it is. With several
replicas each one sees only its share of the traffic; judged apart, a bad candidate would be
caught N times later and a good one would face N independent chances of a false rollback.
So each replica, at each look, adds what it counted since its previous look to one Redis hash
per rollout (HINCRBY, atomic per field) and analyses the sum. Every replica then tests the
same pooled counts; a sequential test stays valid however often, and by whom, it is looked at,
and two replicas reaching the same decision at once are told apart by the state store's
revision check (the second is refused as a conflict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StateStoreUnavailable
from gateway.rollouts.analysis import BinomialCounts, RolloutRecorder, SignalCounts, TallySnapshot
from gateway.rollouts.model import Rollout

# A rollout's pooled counts outlive it by this long, then Redis drops them.
EVIDENCE_TTL_S = 7 * 24 * 3600
_ARMS = ("stable", "candidate")
Snapshot_co = TypeVar("Snapshot_co", covariant=True)


class Evidence(Protocol):
    """The counts a rollout is judged on."""

    async def snapshot(self, rollout: Rollout) -> TallySnapshot: ...

    async def close(self) -> None: ...


class Counts(Protocol[Snapshot_co]):
    """Whatever counts one process keeps for a rollout (the recorder, shadow's pair tally)."""

    def snapshot(self, rollout: Rollout) -> Snapshot_co: ...


class LocalEvidence(Generic[Snapshot_co]):
    """One process: its own counts, canary tallies or shadow pairs alike."""

    def __init__(self, counts: Counts[Snapshot_co]) -> None:
        self._counts = counts

    async def snapshot(self, rollout: Rollout) -> Snapshot_co:
        return self._counts.snapshot(rollout)

    async def close(self) -> None:
        return None


def tally_fields(snapshot: TallySnapshot) -> dict[str, int]:
    """A snapshot as flat counters: `signal:arm:events`, `signal:arm:trials`, `step:N`."""
    fields: dict[str, int] = {}
    for counts in snapshot.signals:
        for arm, cell in (("stable", counts.stable), ("candidate", counts.candidate)):
            fields[f"{counts.name}:{arm}:events"] = cell.events
            fields[f"{counts.name}:{arm}:trials"] = cell.trials
    for step, requests in snapshot.candidate_requests_by_step.items():
        fields[f"step:{step}"] = requests
    return fields


def snapshot_of(
    rollout_id: str, fields: Mapping[str, int], signal_names: Sequence[str]
) -> TallySnapshot:
    """The inverse of `tally_fields`: every one of `signal_names`, counted or not (a signal
    nobody has counted yet has no fields, but it is tested and shares alpha all the same)."""
    signals = tuple(
        SignalCounts(
            name,
            *(
                BinomialCounts(
                    fields.get(f"{name}:{arm}:events", 0), fields.get(f"{name}:{arm}:trials", 0)
                )
                for arm in _ARMS
            ),
        )
        for name in signal_names
    )
    steps = {int(key[5:]): value for key, value in fields.items() if key.startswith("step:")}
    return TallySnapshot(rollout_id, signals, MappingProxyType(steps))


class PooledEvidence:
    """Several replicas: this one's counts added to, and read back with, everyone's in Redis."""

    def __init__(self, recorder: RolloutRecorder, url: str, prefix: str = "turnout") -> None:
        self._recorder = recorder
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self._prefix = prefix
        # Per route: the rollout and the local counts already added to the pool.
        self._added: dict[str, tuple[str, dict[str, int]]] = {}

    async def snapshot(self, rollout: Rollout) -> TallySnapshot:
        local = tally_fields(self._recorder.snapshot(rollout))
        added_for, added = self._added.get(rollout.route, ("", {}))
        if added_for != rollout.rollout_id:
            added = {}
        key = f"{self._prefix}:evidence:{rollout.rollout_id}"
        pipeline = self._client.pipeline(transaction=True)  # all of a look's counts, or none
        for field, count in local.items():
            if since_last_look := count - added.get(field, 0):
                pipeline.hincrby(key, field, since_last_look)
        pipeline.expire(key, EVIDENCE_TTL_S)
        pipeline.hgetall(key)
        try:
            results = await pipeline.execute()
        except (RedisError, OSError) as error:
            raise StateStoreUnavailable(
                f"The pooled rollout evidence (Redis) cannot be reached: {error}."
            ) from None
        self._added[rollout.route] = (rollout.rollout_id, local)
        pooled: dict[bytes, bytes] = results[-1]
        return snapshot_of(
            rollout.rollout_id,
            {key.decode(): int(value) for key, value in pooled.items()},
            self._recorder.signal_names,
        )

    async def close(self) -> None:
        await self._client.aclose()

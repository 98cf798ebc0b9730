"""Placement shared by gateway replicas through Redis: backend leases, what each backend holds,
and which versions other replicas are using.

Several replicas each run their own `FleetPlacement`; Redis keeps them from thrashing the same
backend. A load or an eviction on backend B runs under a short lease on B (`SET NX PX`, released
only by its holder's token, through a Lua script), so two replicas never load or unload on B at
once. A replica that loses the race waits for the lease, then reads Redis's record of what B
holds: a version another replica just loaded there is not loaded again. While a replica has
requests in flight on (B, V) it keeps an "in use until" mark for (B, V) fresh (`in_use_s`
ahead, refreshed every third of that), and no other replica evicts V from B while such a mark
is fresh. When Redis cannot be reached, each step goes on alone (the local policy, as with one
replica), counted in `turnout_adapter_placement_alone_total`; never an error to a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from monitoring.metrics import ADAPTER_PLACEMENT_ALONE

log = logging.getLogger("turnout.placement")

# Delete the lease only if it is still ours (it may have expired and gone to another replica).
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# After a failed call, go on alone this long before trying Redis again (no stall per step).
RETRY_AFTER_S = 1.0


class SharedPlacement:
    """One replica's view of the placement coordination in Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "turnout",
        lease_s: float = 30.0,
        in_use_s: float = 10.0,
        poll_s: float = 0.02,
        replica: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=1.0
        )
        self._release = self._client.register_script(_RELEASE_SCRIPT)
        self._prefix = f"{prefix}:placement"
        self.lease_s = lease_s
        self.in_use_s = in_use_s
        self._poll_s = poll_s
        self.replica = replica or uuid.uuid4().hex
        self._clock = clock
        self._down_until = 0.0
        self._inflight: dict[tuple[str, str], int] = {}
        self._marked: dict[tuple[str, str], float] = {}  # when our mark was last written
        self._refresher: asyncio.Task[None] | None = None
        self.alone = 0  # steps taken alone because Redis could not be reached

    # -- failures: go on alone ---------------------------------------------------------------

    def _reachable(self, step: str) -> bool:
        if time.monotonic() < self._down_until:
            self._went_alone(step)
            return False
        return True

    def _failed(self, step: str, error: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("placement coordination (Redis) unreachable, placing alone: %s", error)
        self._down_until = time.monotonic() + RETRY_AFTER_S
        self._went_alone(step)

    def _went_alone(self, step: str) -> None:
        self.alone += 1
        ADAPTER_PLACEMENT_ALONE.labels(step).inc()

    # -- leases ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, backend: str) -> AsyncIterator[None]:
        """Hold the lease on `backend` for the block (or go on alone when Redis is down)."""
        key = f"{self._prefix}:lease:{backend}"
        token = uuid.uuid4().hex
        held = await self._take(key, token)
        try:
            yield
        finally:
            if held:
                try:
                    await self._release(keys=[key], args=[token])
                except (RedisError, OSError) as error:  # it expires by itself
                    self._failed("lease", error)

    async def _take(self, key: str, token: str) -> bool:
        """Wait for the lease; False when going on without it (Redis down, or a holder past
        `lease_s`, whose lease has expired by then unless Redis misbehaves)."""
        deadline = time.monotonic() + self.lease_s
        while self._reachable("lease"):
            try:
                if await self._client.set(key, token, nx=True, px=int(self.lease_s * 1000)):
                    return True
            except (RedisError, OSError) as error:
                self._failed("lease", error)
                return False
            if time.monotonic() > deadline:
                self._went_alone("lease")
                return False
            await asyncio.sleep(self._poll_s)
        return False

    # -- what each backend holds -------------------------------------------------------------

    async def holds(self, backend: str, version: str) -> bool:
        """Whether some replica recorded `version` loaded on `backend` (False when unknown)."""
        if not self._reachable("held"):
            return False
        try:
            return bool(await self._client.sismember(f"{self._prefix}:held:{backend}", version))
        except (RedisError, OSError) as error:
            self._failed("held", error)
            return False

    async def record(self, backend: str, version: str, *, held: bool) -> None:
        if not self._reachable("record"):
            return
        key = f"{self._prefix}:held:{backend}"
        try:
            if held:
                await self._client.sadd(key, version)
            else:
                await self._client.srem(key, version)
        except (RedisError, OSError) as error:
            self._failed("record", error)

    # -- in use ------------------------------------------------------------------------------

    def _in_use_key(self, backend: str, version: str) -> str:
        return f"{self._prefix}:inuse:{backend}:{version}"

    async def used_elsewhere(self, backend: str, version: str) -> bool:
        """Whether another replica marked `version` on `backend` in use until a time to come."""
        if not self._reachable("in_use"):
            return False
        try:
            marks = await self._client.hgetall(self._in_use_key(backend, version))
        except (RedisError, OSError) as error:
            self._failed("in_use", error)
            return False
        now_ms = self._clock() * 1000
        return any(
            (replica.decode() if isinstance(replica, bytes) else replica) != self.replica
            and float(until) > now_ms
            for replica, until in marks.items()
        )

    async def using(self, backend: str, version: str) -> None:
        """A request of this replica runs on (backend, version): mark it, unless marked lately."""
        pair = (backend, version)
        self._inflight[pair] = self._inflight.get(pair, 0) + 1
        try:
            if self._clock() - self._marked.get(pair, float("-inf")) > self.in_use_s / 3:
                await self._mark([pair])
        except BaseException:
            self.done(backend, version)
            raise
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh())

    def done(self, backend: str, version: str) -> None:
        pair = (backend, version)
        left = self._inflight.get(pair, 0) - 1
        if left > 0:
            self._inflight[pair] = left
        else:
            self._inflight.pop(pair, None)

    async def _mark(self, pairs: list[tuple[str, str]]) -> None:
        if not self._reachable("mark"):
            return
        now = self._clock()
        until_ms = int((now + self.in_use_s) * 1000)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for backend, version in pairs:
                    key = self._in_use_key(backend, version)
                    pipe.hset(key, self.replica, until_ms)
                    pipe.pexpire(key, int(self.in_use_s * 2000))
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._failed("mark", error)
            return
        for pair in pairs:
            self._marked[pair] = now

    async def _refresh(self) -> None:
        """Keep the marks of pairs with requests in flight fresh; stop when none are left."""
        while self._inflight:
            await asyncio.sleep(self.in_use_s / 3)
            await self._mark(list(self._inflight))
        self._marked = {p: t for p, t in self._marked.items() if self._clock() - t < self.in_use_s}

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._client.aclose()

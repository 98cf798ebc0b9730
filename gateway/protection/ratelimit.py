"""Per-tenant rate limits: token buckets for requests and tokens per minute, local or in Redis.

A request takes one from the tenant's request bucket and its estimated tokens (prompt size
plus `max_tokens`) from the token bucket, both or neither. When the answer's usage is known,
`settle` gives back what was over-charged (or takes the shortfall). A cost larger than a
bucket's capacity passes once the bucket is full and leaves it in debt, so a big request is
slowed down, never refused for ever. With Redis, one Lua script does the check-and-take for all
replicas atomically; buckets use the wall clock there, because replicas share no other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.errors import RateLimited

log = logging.getLogger("turnout.ratelimit")

REQUESTS = "requests"
TOKENS = "tokens"


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's budget per minute; None means no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True)
class Bucket:
    """A token bucket's shape: it holds up to `capacity` and refills `refill_per_s`."""

    capacity: float
    refill_per_s: float

    @classmethod
    def per_minute(cls, limit: int) -> Bucket:
        return cls(capacity=float(limit), refill_per_s=limit / 60.0)


@dataclass(frozen=True)
class BucketLevel:
    """What a bucket holds (negative: in debt) as of `updated_s`."""

    tokens: float
    updated_s: float


def refilled(level: BucketLevel | None, bucket: Bucket, now_s: float) -> BucketLevel:
    """The level at `now_s`; a new bucket starts full, a clock that went back adds nothing."""
    if level is None:
        return BucketLevel(bucket.capacity, now_s)
    elapsed = max(0.0, now_s - level.updated_s)
    tokens = min(bucket.capacity, level.tokens + elapsed * bucket.refill_per_s)
    return BucketLevel(tokens, max(now_s, level.updated_s))


def wait_s(level: BucketLevel, bucket: Bucket, cost: float) -> float:
    """Seconds until the bucket can pay `cost` (capped at a full bucket); 0 if it can now."""
    need = min(cost, bucket.capacity)
    return max(0.0, (need - level.tokens) / bucket.refill_per_s)


def buckets_of(limits: TenantLimits) -> dict[str, Bucket]:
    buckets = {}
    if limits.requests_per_minute is not None:
        buckets[REQUESTS] = Bucket.per_minute(limits.requests_per_minute)
    if limits.tokens_per_minute is not None:
        buckets[TOKENS] = Bucket.per_minute(limits.tokens_per_minute)
    return buckets


def estimate_tokens(fields: Mapping[str, Any], default_max_tokens: int) -> int:
    """What to charge up front: about 4 bytes of prompt per token, plus the completion cap."""
    prompt = fields.get("messages", fields.get("prompt", ""))
    prompt_tokens = len(orjson.dumps(prompt)) // 4 + 1
    completion_cap = fields.get("max_completion_tokens") or fields.get("max_tokens")
    if not isinstance(completion_cap, int) or completion_cap <= 0:
        completion_cap = default_max_tokens
    choices = fields.get("n")
    return prompt_tokens + completion_cap * (choices if isinstance(choices, int) else 1)


@dataclass(frozen=True)
class TokenCharge:
    """What a request was charged up front; pass it to `settle` with the real usage."""

    tenant: str
    limits: TenantLimits
    estimated_tokens: int


def _denied(limits: TenantLimits, kind: str, retry_after_s: float) -> RateLimited:
    limit = limits.requests_per_minute if kind == REQUESTS else limits.tokens_per_minute
    return RateLimited(
        f"Rate limit reached: {limit} {kind} per minute for this API key's tenant. "
        f"Retry after {math.ceil(retry_after_s)} s.",
        retry_after_s=retry_after_s,
    )


class RateLimiter(Protocol):
    """Charges a tenant's buckets; RateLimited (429, with Retry-After) when they are empty."""

    async def acquire(
        self, tenant: str, limits: TenantLimits, estimated_tokens: int
    ) -> TokenCharge: ...

    async def settle(self, charge: TokenCharge, used_tokens: int) -> None: ...


class LocalRateLimiter:
    """Buckets in this process's memory (one gateway replica)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._levels: dict[tuple[str, str], BucketLevel] = {}

    async def acquire(
        self, tenant: str, limits: TenantLimits, estimated_tokens: int
    ) -> TokenCharge:
        now = self._clock()
        costs = {REQUESTS: 1.0, TOKENS: float(estimated_tokens)}
        levels = {}
        waits = {}
        for kind, bucket in buckets_of(limits).items():
            levels[kind] = refilled(self._levels.get((tenant, kind)), bucket, now)
            waits[kind] = wait_s(levels[kind], bucket, costs[kind])
        if waits and max(waits.values()) > 0:
            kind = max(waits, key=lambda k: waits[k])
            raise _denied(limits, kind, waits[kind])
        for kind, level in levels.items():
            self._levels[(tenant, kind)] = BucketLevel(level.tokens - costs[kind], level.updated_s)
        return TokenCharge(tenant, limits, estimated_tokens)

    async def settle(self, charge: TokenCharge, used_tokens: int) -> None:
        bucket = buckets_of(charge.limits).get(TOKENS)
        if bucket is None:
            return
        key = (charge.tenant, TOKENS)
        level = refilled(self._levels.get(key), bucket, self._clock())
        refund = charge.estimated_tokens - used_tokens
        self._levels[key] = BucketLevel(
            min(bucket.capacity, level.tokens + refund), level.updated_s
        )


# KEYS: the buckets; ARGV: now_s, then capacity, refill_per_s, cost for each bucket.
# Returns {1} when every bucket paid, else {0, wait_s, index of the bucket that waits longest}.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local levels, updated = {}, {}
local wait, slowest = 0, 0
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local state = redis.call('HMGET', key, 'tokens', 'updated')
  local tokens = tonumber(state[1]) or capacity
  local last = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
  levels[i], updated[i] = tokens, math.max(now, last)
  local need = math.min(cost, capacity)
  if tokens < need and (need - tokens) / rate > wait then
    wait, slowest = (need - tokens) / rate, i
  end
end
if slowest > 0 then
  return {0, tostring(wait), slowest}
end
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local tokens = levels[i] - tonumber(ARGV[3 * i + 1])
  redis.call('HSET', key, 'tokens', tostring(tokens), 'updated', tostring(updated[i]))
  redis.call('PEXPIRE', key, math.ceil((capacity - tokens) / rate * 1000) + 1000)
end
return {1}
"""

# KEYS[1]: the token bucket; ARGV: now_s, capacity, refill_per_s, refund (negative: charge more).
_SETTLE = """
local now = tonumber(ARGV[1])
local capacity, rate = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or capacity
local last = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate + tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(math.max(now, last)))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return 1
"""


def connect_redis(url: str, max_connections: int = 64, timeout_s: float = 0.5) -> Redis:
    """A client for the limiter: a burst waits (up to `timeout_s`) for a pooled connection,
    and a slow Redis costs a request at most about `timeout_s` before it passes unlimited."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    return Redis(connection_pool=pool)


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica; each check-and-take is one atomic script.

    If Redis cannot be reached the request passes and a warning is logged: an outage of the
    limiter should not become an outage of the gateway.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str = "turnout:ratelimit",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = prefix
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)

    def _key(self, tenant: str, kind: str) -> str:
        # The braces keep a tenant's buckets in one Redis Cluster slot, as a script needs.
        return f"{self._prefix}:{{{tenant}}}:{kind}"

    async def acquire(
        self, tenant: str, limits: TenantLimits, estimated_tokens: int
    ) -> TokenCharge:
        charge = TokenCharge(tenant, limits, estimated_tokens)
        buckets = buckets_of(limits)
        if not buckets:
            return charge
        costs = {REQUESTS: 1, TOKENS: estimated_tokens}
        kinds = list(buckets)
        args: list[float] = [self._clock()]
        for kind in kinds:
            args += [buckets[kind].capacity, buckets[kind].refill_per_s, costs[kind]]
        try:
            answer = await self._acquire(keys=[self._key(tenant, k) for k in kinds], args=args)
        except RedisError as error:
            log.warning("rate limiter: Redis unavailable (%s); letting the request pass", error)
            return charge
        if int(answer[0]) == 1:
            return charge
        raise _denied(limits, kinds[int(answer[2]) - 1], float(answer[1]))

    async def settle(self, charge: TokenCharge, used_tokens: int) -> None:
        bucket = buckets_of(charge.limits).get(TOKENS)
        if bucket is None or used_tokens == charge.estimated_tokens:
            return
        args = [self._clock(), bucket.capacity, bucket.refill_per_s]
        try:
            await self._settle(
                keys=[self._key(charge.tenant, TOKENS)],
                args=[*args, charge.estimated_tokens - used_tokens],
            )
        except RedisError as error:
            log.warning("rate limiter: Redis unavailable (%s); usage not settled", error)

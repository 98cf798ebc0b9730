"""Per-tenant token buckets, in memory and in a real Redis shared by two limiters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.api.errors import error_response
from gateway.bench.redis_server import RedisServer
from gateway.errors import RateLimited
from gateway.protection.ratelimit import (
    Bucket,
    BucketLevel,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    TenantLimits,
    connect_redis,
    estimate_tokens,
    refilled,
    wait_s,
)
from gateway.serving.embedded_vllm import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """A clock the test moves by hand (the limiter under test reads only this)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    # These tests are about the buckets; the short production timeout (after which a request
    # passes unlimited) would turn a stalled test process into "everything passed" - seen in
    # CI - so they wait longer. The timeout itself is tested against an unreachable Redis.
    client = connect_redis(redis_server.url, timeout_s=10.0)
    await client.flushdb()
    yield client
    await client.aclose()


LIMITS = TenantLimits(requests_per_minute=3, tokens_per_minute=600)


async def denied(limiter: RateLimiter, tenant: str, limits: TenantLimits, tokens: int) -> float:
    with pytest.raises(RateLimited) as raised:
        await limiter.acquire(tenant, limits, tokens)
    assert raised.value.retry_after_s is not None
    return raised.value.retry_after_s


# --- the bucket arithmetic ------------------------------------------------------------------


@given(
    tokens=st.floats(-1e6, 1e6),
    capacity=st.floats(1, 1e6),
    elapsed=st.floats(-1e4, 1e4),
)
def test_refill_never_exceeds_capacity_nor_runs_backwards(
    tokens: float, capacity: float, elapsed: float
) -> None:
    bucket = Bucket(capacity=capacity, refill_per_s=capacity / 60)
    before = BucketLevel(min(tokens, capacity), updated_s=1e5)
    after = refilled(before, bucket, 1e5 + elapsed)
    assert before.tokens <= after.tokens <= capacity
    assert after.updated_s >= before.updated_s


def test_wait_is_the_time_to_refill_the_missing_tokens() -> None:
    bucket = Bucket.per_minute(60)  # one per second
    assert wait_s(BucketLevel(0.0, 0.0), bucket, 1) == pytest.approx(1.0)
    assert wait_s(BucketLevel(-4.0, 0.0), bucket, 1) == pytest.approx(5.0)
    assert wait_s(BucketLevel(3.0, 0.0), bucket, 2) == 0.0
    # Larger than the bucket: it waits only for a full bucket.
    assert wait_s(BucketLevel(30.0, 0.0), bucket, 1000) == pytest.approx(30.0)


def test_the_estimate_counts_the_prompt_and_the_completion_cap() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    with_cap = estimate_tokens({"messages": messages, "max_tokens": 50}, default_max_tokens=999)
    assert 100 + 50 <= with_cap <= 130 + 50
    without_cap = estimate_tokens({"prompt": "hello"}, default_max_tokens=256)
    assert 256 < without_cap < 260
    two_choices = estimate_tokens({"prompt": "", "max_tokens": 10, "n": 2}, 256)
    assert two_choices >= 20


def test_a_rate_limit_error_carries_a_whole_second_retry_after_header() -> None:
    response = error_response(RateLimited("slow down", retry_after_s=2.2))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert orjson.loads(response.body)["error"]["code"] == "rate_limit_exceeded"
    assert error_response(RateLimited("x", retry_after_s=0.01)).headers["retry-after"] == "1"


# --- both limiters behave the same ----------------------------------------------------------


@pytest.fixture(params=["local", "redis"])
async def limiter_and_clock(
    request: pytest.FixtureRequest, redis_client: Redis
) -> AsyncIterator[tuple[RateLimiter, FakeClock]]:
    clock = FakeClock()
    if request.param == "local":
        yield LocalRateLimiter(clock=clock), clock
    else:
        yield RedisRateLimiter(redis_client, clock=clock), clock


async def test_requests_past_the_per_minute_limit_get_429_with_the_refill_time(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, clock = limiter_and_clock
    for _ in range(3):
        await limiter.acquire("acme", LIMITS, 10)
    retry_after = await denied(limiter, "acme", LIMITS, 10)
    assert retry_after == pytest.approx(20.0)  # 3 per minute: one every 20 s
    clock.now += 19.0
    assert await denied(limiter, "acme", LIMITS, 10) == pytest.approx(1.0)
    clock.now += 1.0
    await limiter.acquire("acme", LIMITS, 10)


async def test_tenants_have_separate_buckets(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, _ = limiter_and_clock
    for _ in range(3):
        await limiter.acquire("acme", LIMITS, 1)
    await denied(limiter, "acme", LIMITS, 1)
    await limiter.acquire("globex", LIMITS, 1)


async def test_a_token_estimate_over_budget_is_refused_and_charges_nothing(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, _ = limiter_and_clock
    await limiter.acquire("acme", LIMITS, 500)
    retry_after = await denied(limiter, "acme", LIMITS, 200)
    assert retry_after == pytest.approx(10.0)  # 100 missing at 10 tokens/s
    # The refused request took no request token: two more small ones still pass.
    await limiter.acquire("acme", LIMITS, 50)
    await limiter.acquire("acme", LIMITS, 50)


async def test_settling_with_real_usage_refunds_the_overestimate(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, _ = limiter_and_clock
    charge = await limiter.acquire("acme", LIMITS, 550)
    await denied(limiter, "acme", LIMITS, 100)
    await limiter.settle(charge, used_tokens=50)
    await limiter.acquire("acme", LIMITS, 500)


async def test_usage_above_the_estimate_puts_the_bucket_in_debt(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, clock = limiter_and_clock
    charge = await limiter.acquire("acme", LIMITS, 100)
    await limiter.settle(charge, used_tokens=700)  # 600 more than charged: 500 - 600 = -100
    assert await denied(limiter, "acme", LIMITS, 1) == pytest.approx(10.1)
    clock.now += 10.1
    await limiter.acquire("acme", LIMITS, 1)


async def test_a_request_larger_than_the_bucket_passes_once_it_is_full(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, clock = limiter_and_clock
    await limiter.acquire("acme", LIMITS, 5000)
    # The bucket owes 4400 tokens; filling it to 600 again takes 5000 / 10 per second.
    assert await denied(limiter, "acme", LIMITS, 5000) == pytest.approx(500.0)
    clock.now += 500.0
    await limiter.acquire("acme", LIMITS, 5000)


async def test_no_limits_means_no_refusals(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    limiter, _ = limiter_and_clock
    for _ in range(100):
        await limiter.acquire("acme", TenantLimits(), 10**6)


# --- Redis: one budget for every replica ----------------------------------------------------


async def test_two_replicas_share_one_budget_through_redis(redis_client: Redis) -> None:
    clock = FakeClock()
    replicas = [RedisRateLimiter(redis_client, clock=clock) for _ in range(2)]
    limits = TenantLimits(requests_per_minute=100)

    async def call(limiter: RedisRateLimiter) -> bool:
        try:
            await limiter.acquire("acme", limits, 1)
        except RateLimited:
            return False
        return True

    passed = await asyncio.gather(*(call(replicas[i % 2]) for i in range(250)))
    assert sum(passed) == 100


async def test_redis_buckets_expire_once_they_would_be_full_again(redis_client: Redis) -> None:
    limiter = RedisRateLimiter(redis_client)
    await limiter.acquire("acme", TenantLimits(requests_per_minute=6000), 1)
    keys = [key async for key in redis_client.scan_iter("turnout:ratelimit:*")]
    assert keys == [b"turnout:ratelimit:{acme}:requests"]
    ttl_ms = await redis_client.pttl(keys[0])
    assert 0 < ttl_ms <= 1010 + 10  # 1 of 6000/min refills in 10 ms, plus a second's margin


async def test_when_redis_is_down_requests_pass() -> None:
    client = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RedisRateLimiter(client)
    try:
        limits = TenantLimits(requests_per_minute=1)
        charges = [await limiter.acquire("acme", limits, 1) for _ in range(3)]
        await limiter.settle(charges[0], 0)
    finally:
        await client.aclose()
    assert len(charges) == 3

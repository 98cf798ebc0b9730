"""What several gateway test modules share: a real Redis, and a canary rollout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.bench.redis_server import RedisServer, running_redis_server
from gateway.rollouts import Rollout

CANARY = Rollout(
    route="triage",
    stable="triage@v1",
    rollout_id="r1",
    candidate="triage@v2",
    weight_percent=5.0,
    steps=(5.0, 50.0, 100.0),
    revision=1,
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server

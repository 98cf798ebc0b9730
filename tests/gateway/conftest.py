"""What several gateway test modules share: a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.bench.redis_server import RedisServer, running_redis_server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server

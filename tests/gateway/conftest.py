"""What several gateway test modules share: a real Redis, a synthetic adapter store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.bench.redis_server import RedisServer, running_redis_server
from tests.support.store import write_synthetic_store


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo adapters' names and versions as zero-weight adapters (no torch, milliseconds)."""
    return write_synthetic_store(tmp_path_factory.mktemp("synthetic") / "store")

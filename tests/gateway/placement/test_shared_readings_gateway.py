"""Two workers of one gateway with Redis in front of a simulated vLLM backend: its `/metrics`
page is read about once per `adapters.metrics_scrape_s`, not once per worker."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gateway.bench.redis_server import RedisServer
from tests.support.demo import BASE_MODEL, demo_weights_store
from tests.support.metric_text import counter
from tests.support.processes import running_gateway, simulated_vllm
from tests.support.waiting import wait_until

INTERVAL_S = 0.25


@pytest.mark.slow
def test_two_workers_read_the_backends_metrics_once_per_interval(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> None:
    folder = tmp_path_factory.mktemp("shared-readings")
    store = demo_weights_store(demo_model, folder, 1)
    with simulated_vllm("--resident", "2") as backend:
        config = {
            "base_model": BASE_MODEL,
            "backends": [{"url": backend}],
            "server": {"workers": 2},
            "state": {"dir": str(folder / "state"), "redis_url": redis_server.url},
            "adapters": {
                "store": str(store),
                "placement": "demand",
                "metrics_scrape_s": INTERVAL_S,
            },
            "routes": {"r0": {"stable": "task-0@v1"}},
        }
        with running_gateway(config, folder) as gateway:

            def reads() -> float:
                page = httpx.get(backend + "/metrics", timeout=10).text
                return counter(page, "sim_metrics_reads_total")  # this read included

            def scrapes(result: str) -> float:
                page = httpx.get(gateway + "/metrics", timeout=10).text
                return counter(page, "turnout_backend_metrics_scrapes_total", result=result)

            wait_until(lambda: scrapes("shared") > 0, 20, "a worker to take the other's reading")
            before, started = reads(), time.monotonic()
            time.sleep(3.0)
            read, elapsed = reads() - before - 1, time.monotonic() - started  # ours: 1
            intervals = elapsed / INTERVAL_S  # 12: two workers reading alone would read ~24
            assert intervals * 0.6 <= read <= intervals * 1.35

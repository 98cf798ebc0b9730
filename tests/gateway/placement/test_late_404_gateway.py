"""vLLM's 404 that arrives after the version was reloaded, through the gateway as a process in
front of a simulated vLLM backend (`gateway.bench.fleet_sim`, its 404 for an unknown adapter
answered `--not-found-ms` late, `POST /sim/restart` to forget every adapter as a restart does).

The backend restarts behind the gateway's back; two requests for the version it held are sent,
the second while the first's 404 is still on its way. The first's 404 makes the gateway forget
the version there, load it again and retry; the second's 404 comes back only after that reload
completed, so it says nothing of the fresh copy: its retry is served by it, and the version is
loaded again exactly once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.demo import BASE_MODEL, demo_weights_store
from tests.support.metric_text import counter
from tests.support.processes import running_gateway, simulated_vllm
from tests.support.waiting import wait_until

LATE_S = 2.0  # how late the backend answers 404 for an adapter it does not know


def one_route_config(backend: str, store: Path) -> dict[str, Any]:
    """One route over one version, demand placement in front of one simulated backend; no
    listing may forget the version first: the 404 path is what is tested."""
    return {
        "base_model": BASE_MODEL,
        "backends": [{"url": backend}],
        "adapters": {
            "store": str(store),
            "placement": "demand",
            "max_loras": 2,
            "max_cpu_loras": 2,
            "reconcile_interval_s": 3600,
        },
        "routes": {"r0": {"stable": "task-0@v1"}},
    }


@pytest.mark.slow
def test_a_late_404_after_the_reload_is_retried_on_the_fresh_copy_without_a_second_reload(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("late404")
    store = demo_weights_store(demo_model, folder, 1)
    flags = ("--resident", "2", "--load-ms", "20", "--not-found-ms", str(LATE_S * 1000))
    with (
        simulated_vllm(*flags) as backend,
        running_gateway(one_route_config(backend, store), folder) as gateway,
    ):
        client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)

        def ask(_: int = 0) -> str:
            answer = client.completions.create(model="r0", prompt="hi", max_tokens=4)
            return answer.choices[0].text

        def sim(name: str) -> float:
            return counter(httpx.get(backend + "/metrics", timeout=10).text, name)

        def gateway_metric(name: str, **labels: str) -> float:
            return counter(httpx.get(gateway + "/metrics", timeout=10).text, name, **labels)

        assert ask() == "adapter:task-0@v1"
        loads = "turnout_adapter_placement_loads_total"
        assert gateway_metric(loads) == 1
        httpx.post(backend + "/sim/restart", timeout=10).raise_for_status()
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(ask)
            wait_until(lambda: sim("sim_not_found_total") == 1, 10, "the first request's 404")
            # The second goes out while the first's 404 is on its way, long enough after it
            # that the reload (20 ms) completes before the second's 404 comes back.
            time.sleep(LATE_S / 4)
            second = pool.submit(ask)
            assert first.result(timeout=30) == "adapter:task-0@v1"
            assert second.result(timeout=30) == "adapter:task-0@v1"
        assert sim("sim_not_found_total") == 2  # both were sent before the reload
        assert gateway_metric(loads) == 2  # the first load, and one reload
        evictions = "turnout_adapter_evictions_total"
        assert gateway_metric(evictions, reason="lost") == 1


@pytest.mark.slow
def test_a_backend_that_loses_every_load_gets_one_reload_per_request_then_a_503(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """vLLM answers 404 again after the reload (it lost the version twice): the request is not
    retried without end, nor answered by another model, nor a 500: 503 `adapter_not_ready`
    with Retry-After, after exactly one reload."""
    folder = tmp_path_factory.mktemp("lost-twice")
    store = demo_weights_store(demo_model, folder, 1)
    with (
        simulated_vllm("--resident", "2", "--load-ms", "20", "--forget-loaded") as backend,
        running_gateway(one_route_config(backend, store), folder) as gateway,
    ):
        client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)

        def not_found() -> float:
            return counter(httpx.get(backend + "/metrics", timeout=10).text, "sim_not_found_total")

        def loads() -> float:
            page = httpx.get(gateway + "/metrics", timeout=10).text
            return counter(page, "turnout_adapter_placement_loads_total")

        for asked in (1, 2):
            with pytest.raises(openai.APIStatusError) as caught:
                client.completions.create(model="r0", prompt="hi", max_tokens=4)
            assert caught.value.status_code == 503
            assert caught.value.response.json()["error"]["code"] == "adapter_not_ready"
            assert float(caught.value.response.headers["retry-after"]) > 0
            assert not_found() == 2 * asked  # the first attempt and its one retry
            assert loads() == 2 * asked  # its load and one reload, no more

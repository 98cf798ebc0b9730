"""Queue depth and slots from the backends' own /metrics, through the gateway as a process in
front of two simulated vLLM backends (`gateway.bench.fleet_sim`, which exports vLLM's
`vllm:num_requests_waiting` and `vllm:lora_requests_info`), with the official OpenAI client.

Other clients keep one backend's queue full by calling it directly; the gateway reads that
queue and sends its own requests (and the loads they need) to the other backend. The config
sets no slot count, so each backend's comes from its `max_lora`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest

from gateway.upstream.backend_metrics import parse_samples
from tests.support.demo import BASE_MODEL, demo_weights_store
from tests.support.processes import running_gateway, simulated_vllm
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def store(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_weights_store(demo_model, tmp_path_factory.mktemp("queue"), 2)


def gauge(text: str, name: str, backend: str) -> float | None:
    for sample in parse_samples(text, [name]):
        if sample.labels.get("backend") == backend:
            return sample.value
    return None


def served(backend: str) -> float:
    page = httpx.get(backend + "/metrics", timeout=10).text
    return sum(s.value for s in parse_samples(page, ["vllm:request_success_total"]))


def test_requests_avoid_the_backend_whose_queue_other_clients_fill(
    store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with (
        # busy: one sequence at a time, 300 ms each, so other clients' requests queue
        simulated_vllm(
            "--resident", "4", "--batch", "2", "--max-seqs", "1", "--decode-ms", "300"
        ) as busy,
        simulated_vllm("--resident", "4", "--batch", "2") as idle,
    ):
        config = {
            "base_model": BASE_MODEL,
            "backends": [{"url": busy}, {"url": idle}],
            "adapters": {"store": str(store), "placement": "demand", "load_wait_s": 20},
            "routes": {f"r{i}": {"stable": f"task-{i}@v1"} for i in range(2)},
        }
        with running_gateway(config, tmp_path_factory.mktemp("gw")) as gateway:
            # Capacity: no slot count in the config, so each backend's max_lora (2) is used.
            def capacities() -> bool:
                page = httpx.get(gateway + "/metrics", timeout=10).text
                found = [gauge(page, "turnout_adapter_capacity", b) for b in (busy, idle)]
                return found == [2.0, 2.0]

            wait_until(capacities, 20, "capacities discovered from max_lora")
            stop = threading.Event()
            others_done = [0]
            httpx.post(
                busy + "/v1/load_lora_adapter", json={"lora_name": "other", "lora_path": "/o"}
            )

            def other_client() -> None:
                with httpx.Client(timeout=30) as client:
                    while not stop.is_set():
                        body = {"model": "other", "prompt": "hi", "max_tokens": 4}
                        if client.post(busy + "/v1/completions", json=body).status_code == 200:
                            others_done[0] += 1

            threads = [threading.Thread(target=other_client) for _ in range(4)]
            for thread in threads:
                thread.start()
            try:

                def queue_seen() -> bool:
                    page = httpx.get(gateway + "/metrics", timeout=10).text
                    return (gauge(page, "turnout_adapter_placement_queued", busy) or 0) >= 2

                wait_until(queue_seen, 20, "the gateway to read the busy backend's queue")
                client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
                for i in range(8):
                    answer = client.completions.create(
                        model=f"r{i % 2}", prompt="hi", max_tokens=4, temperature=0
                    )
                    assert answer.choices[0].text == f"adapter:task-{i % 2}@v1"
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=30)
            # Every request the busy backend answered was another client's; ours all went
            # (with both loads) to the idle one.
            assert served(busy) == others_done[0] > 0
            assert served(idle) == 8

"""Placement reconciled with what each backend lists, through the gateway as a process in front
of two simulated vLLM backends (`gateway.bench.fleet_sim`: its `/v1/models` lists the adapters
loaded through the API, as vLLM's does; `POST /sim/restart` forgets them all, as a restart does).

A backend restarts: before any request is sent, the gateway's placement (admin API) shows its
versions gone from it, counted as `backend_lost` evictions; the next request for each loads it
again and is answered without the backend ever answering 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.protection.auth import issue_key
from tests.support.demo import BASE_MODEL, demo_weights_store
from tests.support.metric_text import counter
from tests.support.processes import running_gateway, simulated_vllm
from tests.support.waiting import wait_until

ADMIN = issue_key()


@pytest.mark.slow
def test_a_restarted_backend_is_reconciled_before_the_next_request_needs_a_404(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("reconcile")
    store = demo_weights_store(demo_model, folder, 3)
    admins = folder / "admins.yaml"
    admins.write_text(yaml.safe_dump({"admins": {"ops": [{"sha256": ADMIN.sha256}]}}))
    flags = ("--resident", "4", "--batch", "2", "--load-ms", "20")
    with simulated_vllm(*flags) as first, simulated_vllm(*flags) as second:
        config = {
            "base_model": BASE_MODEL,
            "backends": [{"url": first}, {"url": second}],
            "adapters": {
                "store": str(store),
                "placement": "demand",
                "max_loras": 2,
                "max_cpu_loras": 4,
                "reconcile_interval_s": 0.2,
            },
            "auth": {"admin_keys_file": str(admins)},
            "routes": {f"r{i}": {"stable": f"task-{i}@v1"} for i in range(3)},
        }
        with running_gateway(config, folder) as gateway:
            client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)

            def ask(route: str) -> str:
                answer = client.completions.create(model=route, prompt="hi", max_tokens=4)
                return answer.choices[0].text

            def view() -> dict[str, Any]:
                return httpx.get(
                    gateway + "/admin/placement",
                    headers={"authorization": f"Bearer {ADMIN.key}"},
                    timeout=10,
                ).json()

            def held() -> dict[str, set[str]]:
                return {
                    backend["url"]: {entry["version"] for entry in backend["versions"]}
                    for backend in view()["backends"]
                }

            for i in range(3):
                assert ask(f"r{i}") == f"adapter:task-{i}@v1"
            before = held()
            restarted = max(before, key=lambda url: len(before[url]))
            lost = before[restarted]
            assert lost  # three versions over two backends: this one holds at least two

            httpx.post(restarted + "/sim/restart", timeout=10).raise_for_status()
            wait_until(lambda: not held()[restarted], 10, "placement to forget the restart")
            after = held()  # the other backend, checked as often, keeps what it holds
            assert all(after[url] == before[url] for url in after if url != restarted)
            page = httpx.get(gateway + "/metrics", timeout=10).text
            evictions = "turnout_adapter_evictions_total"
            assert counter(page, evictions, backend=restarted, reason="backend_lost") == len(lost)
            shown = {backend["url"]: backend["evictions"] for backend in view()["backends"]}
            assert shown[restarted] == {"backend_lost": len(lost)}

            for version in sorted(lost):
                index = version.split("@")[0].split("-")[1]
                assert ask(f"r{index}") == f"adapter:{version}"
            for backend in (first, second):  # no request ever met a 404
                page = httpx.get(backend + "/metrics", timeout=10).text
                assert counter(page, "sim_not_found_total") == 0
            page = httpx.get(gateway + "/metrics", timeout=10).text
            assert counter(page, evictions, reason="lost") == 0
            assert set().union(*held().values()) >= lost

"""Placement's reconcile against a real vLLM (CPU build): its `/v1/models` lists an adapter
once `/v1/load_lora_adapter` answered, whatever its LRU holds, and no longer once unloaded, so
a version unloaded behind the gateway's back is forgotten by placement."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from adapters.demo import DEMO_VERSION
from gateway.config import TimeoutsConfig
from gateway.placement.fleet import BackendCapacity, FleetPlacement
from gateway.placement.loads import AdapterLoads
from gateway.upstream.adapter_loader import VllmAdapterAdmin
from gateway.upstream.backends import Http1Upstream
from gateway.upstream.demand_placement import PlacementReconcile

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

PROBE = "reconcile-probe@v1"


class VllmCalls:
    """Placement's calls straight onto vLLM's endpoints, the demo adapter's files under a name
    of this test's own."""

    def __init__(self, admin: VllmAdapterAdmin, path: Path) -> None:
        self.admin = admin
        self.path = path

    async def load(self, backend: str, version: str) -> None:
        await self.admin.load(backend, version, str(self.path))

    async def unload(self, backend: str, version: str) -> None:
        await self.admin.unload(backend, version)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_version_unloaded_from_a_live_vllm_is_forgotten_by_placement(
    anyio_backend: str, vllm_url: str, demo_model: Path
) -> None:
    client = Http1Upstream(TimeoutsConfig())
    admin = VllmAdapterAdmin(client)
    path = demo_model / "adapters" / "summarize" / DEMO_VERSION
    loads = AdapterLoads(FleetPlacement({vllm_url: BackendCapacity(4, 2)}), VllmCalls(admin, path))
    reconcile = PlacementReconcile(loads, admin, [vllm_url], interval_s=1.0)
    try:
        loads.release((await loads.acquire(PROBE)).backend, PROBE)
        listed = await admin.resident(vllm_url)
        assert PROBE in listed
        assert f"summarize@{DEMO_VERSION}" in listed  # the fixture's own, loaded at its start
        assert all("@" in name for name in listed)  # the base model's card has no parent
        assert await reconcile.check(vllm_url) == []
        # Someone unloads it behind placement's back (a restart forgets it the same way).
        async with httpx.AsyncClient(timeout=60) as http:
            unloaded = await http.post(
                vllm_url + "/v1/unload_lora_adapter", json={"lora_name": PROBE}
            )
        assert unloaded.status_code == 200, unloaded.text
        assert await reconcile.check(vllm_url) == [PROBE]
        assert loads.fleet.resident(vllm_url) == frozenset()
    finally:
        await admin.unload(vllm_url, PROBE)  # 404 if already gone: accepted
        await client.close()

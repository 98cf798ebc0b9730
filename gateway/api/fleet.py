"""`GET /admin/backends`: each backend's health, breaker and adapters, for operators only.

The public `/readyz` says only ready or not; this is where the addresses and the reasons are.
It reads the state the gateway already keeps (the periodic probes, the breakers, residency) and
probes nothing itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from gateway.api.admin import require_admin
from gateway.auth import AdminKeyring
from gateway.backends import BackendPool
from gateway.health import Readiness


def fleet_router(pool: BackendPool, readiness: Readiness, admins: AdminKeyring | None) -> APIRouter:
    """`/admin/backends`, guarded like every other `/admin` route."""
    router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin(admins))])

    async def list_backends() -> dict[str, Any]:
        now_s = pool.health.now_s()
        latest = pool.health.latest()
        backends = []
        for url in pool.urls:
            probe = latest[url]
            backends.append(
                {
                    "url": url,
                    "up": None if probe is None else probe.up,
                    "probed_s_ago": None if probe is None else round(now_s - probe.at_s, 3),
                    "breaker": pool.picker.breakers[url].state.value,
                    "adapters": (
                        None if pool.residency.unknown(url) else sorted(pool.residency.held(url))
                    ),
                }
            )
        return {"ready": readiness.ready(), "backends": backends}

    router.add_api_route(
        "/backends", list_backends, methods=["GET"], summary="Each backend's health and adapters"
    )
    return router

"""`GET /admin/backends` and `/admin/placement`: each backend's health, breaker and adapters,
and which adapter versions placement put where and why; for operators only.

The public `/readyz` says only ready or not; this is where the addresses and the reasons are.
It reads the state the gateway already keeps (the periodic probes, the breakers, residency) and
probes nothing itself.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends

from gateway.api.admin import require_admin
from gateway.protection.auth import AdminKeyring
from gateway.upstream.backends import BackendPool
from gateway.upstream.health import Readiness


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

    async def show_placement() -> dict[str, Any]:
        return placement_view(pool)

    router.add_api_route(
        "/placement",
        show_placement,
        methods=["GET"],
        summary="Which backend holds which adapter version, and why",
    )
    return router


def placement_view(pool: BackendPool) -> dict[str, Any]:
    """Per backend, the versions it holds: with demand placement, why each is there (its load
    reason, warm pin), requests in flight on it and idle time, and its evictions by reason
    since the start; else what the loader put there."""
    loads = pool.placement
    if loads is None:
        return {
            "placement": "everywhere",
            "backends": [
                {
                    "url": url,
                    "versions": [
                        {"version": name, "reason": "everywhere"}
                        for name in sorted(pool.residency.held(url))
                    ],
                }
                for url in pool.urls
            ],
        }
    fleet = loads.fleet
    return {
        "placement": "demand",
        "eviction": fleet.eviction.value,
        "waiting": loads.waiting,
        "loads_in_flight": loads.loads_in_flight,
        "backends": [
            {
                "url": url,
                "inflight": fleet.inflight(url),
                "versions": [asdict(held) for held in held_versions],
                "evictions": dict(sorted(loads.evictions.get(url, {}).items())),
            }
            for url, held_versions in fleet.view().items()
        ],
    }

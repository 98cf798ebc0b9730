"""Which adapter versions a routing table keeps warm (resident whatever their traffic)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import RouteConfig
from gateway.routing.table import RoutingTable


def warm_versions(table: RoutingTable, routes: Mapping[str, RouteConfig]) -> frozenset[str]:
    """A rollout's stable and candidate (both arms take traffic and a rollback must not wait
    for a load), and every version of a route marked `warm: true`."""
    warm: set[str] = set()
    for name, entry in table.entries.items():
        route = routes.get(name)
        if entry.candidate is None and not (route is not None and route.warm):
            continue
        for target in (entry.stable, entry.candidate):
            if target is not None and target.adapter is not None:
                warm.add(target.served_model)
    return frozenset(warm)


def routed_versions(table: RoutingTable) -> frozenset[str]:
    return frozenset(version.served_name for version in table.adapter_versions())

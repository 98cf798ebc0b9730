"""Route resolution: an immutable table from client-visible model names to what serves them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.config import TurnoutConfig
from gateway.errors import RouteNotFound


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    """One immutable version of a LoRA adapter, e.g. `support-triage@v1`."""

    name: str
    version: str

    @classmethod
    def parse(cls, ref: str) -> AdapterVersion:
        name, _, version = ref.partition("@")
        return cls(name=name, version=version)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def served_name(self) -> str:
        """The name vLLM knows this version by: unique per version, never reused for new weights."""
        return self.ref


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the route it named, the adapter (None: bare base), vLLM's name."""

    route: str
    adapter: AdapterVersion | None
    served_model: str


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Route name -> Target. Never mutated: a change publishes a new table."""

    targets: Mapping[str, Target]

    def resolve(self, route: str) -> Target:
        target = self.targets.get(route)
        if target is None:
            raise RouteNotFound(f"The model `{route}` does not exist.", param="model")
        return target

    def adapter_versions(self) -> frozenset[AdapterVersion]:
        """Every adapter version some route can send traffic to."""
        return frozenset(t.adapter for t in self.targets.values() if t.adapter is not None)


def build_routing_table(config: TurnoutConfig) -> RoutingTable:
    """The table a validated config describes."""
    targets: dict[str, Target] = {}
    for route, route_config in config.routes.items():
        if route_config.stable is None:
            targets[route] = Target(route=route, adapter=None, served_model=config.base_model)
        else:
            adapter = AdapterVersion.parse(route_config.stable)
            targets[route] = Target(route=route, adapter=adapter, served_model=adapter.served_name)
    return RoutingTable(targets=MappingProxyType(targets))


class PublishedTable:
    """The routing table in force; the control plane swaps it in one step, requests read it."""

    def __init__(self, table: RoutingTable) -> None:
        self.current = table

    def publish(self, table: RoutingTable) -> None:
        self.current = table

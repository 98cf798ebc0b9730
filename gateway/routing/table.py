"""Route resolution: an immutable table from client-visible model names to what serves them.

A route has a stable version and, during a rollout, a candidate with a weight; which arm a
request gets is decided here (sticky per caller). The control plane builds a new table for
every config or rollout change and swaps it in one step; requests only ever read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.config import RouteConfig, TurnoutConfig
from gateway.contracts.contract import Contract, make_contract
from gateway.errors import RouteNotFound
from gateway.gc_pause import gc_paused
from gateway.rollouts.model import Arm, Rollout, assign_arm, declare
from gateway.shadow.settings import ShadowCategory
from gateway.surface.check import RequestSurface
from gateway.surface.config import RequestsConfig


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
    """Where one request goes: route, arm, adapter version (None: bare base), vLLM's name."""

    route: str
    adapter: AdapterVersion | None
    served_model: str
    arm: Arm = "stable"
    contract: Contract | None = None
    rollout: Rollout | None = None  # the route's rollout while a candidate is out
    max_tokens: int | None = None  # the route's ceiling on a request's max_tokens

    @property
    def version_label(self) -> str:
        """The `version` metric label: the adapter version, or "base"."""
        return self.adapter.ref if self.adapter is not None else "base"


DEFAULT_REQUESTS = RequestSurface.build(RequestsConfig(), None)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route in a table: its stable target and, during a rollout, a weighted candidate."""

    stable: Target
    candidate: Target | None = None
    rollout: Rollout | None = None
    requests: RequestSurface = DEFAULT_REQUESTS
    shadow_category: ShadowCategory | None = None  # how a shadow pair's category is found

    def pick(
        self,
        sticky_key: str | None,
        draw: Callable[[], float],
        forced: Arm | None = None,
    ) -> Target:
        """The target for one request: `forced` if given, else by sticky assignment."""
        if self.candidate is None or self.rollout is None:
            return self.stable
        if self.rollout.mode == "shadow" and forced is None:
            return self.stable  # a shadow's candidate gets copies (`shadow`), never a caller
        arm = forced or assign_arm(
            sticky_key, self.rollout.rollout_id, self.rollout.weight_percent, draw
        )
        return self.candidate if arm == "candidate" else self.stable

    @property
    def shadow(self) -> Target | None:
        """The candidate that gets copies of this route's requests, while a shadow runs."""
        if self.rollout is not None and self.rollout.shadowing:
            return self.candidate
        return None


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Route name -> RouteEntry. Never mutated: a change publishes a new table."""

    entries: Mapping[str, RouteEntry]

    def entry(self, route: str) -> RouteEntry:
        found = self.entries.get(route)
        if found is None:
            raise RouteNotFound(f"The model `{route}` does not exist.", param="model")
        return found

    def shadow_categories(self, route: str) -> tuple[str, ...]:
        """A route's declared input categories for its shadow's test (none: not split)."""
        found = self.entries.get(route)
        rule = found.shadow_category if found is not None else None
        return () if rule is None else rule.groups

    def adapter_versions(self) -> frozenset[AdapterVersion]:
        """Every adapter version some route can send traffic to (stable and candidates)."""
        versions = set()
        for entry in self.entries.values():
            for target in (entry.stable, entry.candidate):
                if target is not None and target.adapter is not None:
                    versions.add(target.adapter)
        return frozenset(versions)


def _target(
    route: str,
    ref: str | None,
    arm: Arm,
    base_model: str,
    contract: Contract | None,
    max_tokens: int | None,
    rollout: Rollout | None = None,
) -> Target:
    if ref is None:
        return Target(route, None, base_model, arm, contract, rollout, max_tokens)
    adapter = AdapterVersion.parse(ref)
    return Target(route, adapter, adapter.served_name, arm, contract, rollout, max_tokens)


def route_contract(route: str, config: RouteConfig) -> Contract | None:
    if config.json_schema is None:
        return None
    return make_contract(
        config.json_schema,
        on_invalid=config.on_invalid,
        max_retries=config.max_retries,
        stream_validation=config.stream_validation,
        source="route",
        name=route,
        request_schema=config.request_schema,
    )


@gc_paused()
def declared_rollouts(config: TurnoutConfig) -> dict[str, Rollout]:
    """Every route's `Rollout` as the config file declares it (settled routes included)."""
    return {
        route: declare(
            route,
            rc.stable,
            candidate=rc.candidate,
            mode=rc.mode,
            weight_percent=rc.weight,
            steps=tuple(rc.steps),
            min_requests_per_step=rc.min_requests_per_step,
            min_seconds_per_step=rc.min_seconds_per_step,
            shadow_percent=rc.shadow_percent,
            shadow_min_pairs=rc.shadow_min_pairs,
            auto_promote=rc.auto_promote,
        )
        for route, rc in config.routes.items()
    }


@gc_paused()  # 10,000 routes: nothing the build allocates is garbage
def build_routing_table(
    config: TurnoutConfig, rollouts: Mapping[str, Rollout] | None = None
) -> RoutingTable:
    """The table a validated config describes, with runtime rollout state where there is some
    (a promotion or rollback done through the admin API outlives the config's declaration)."""
    entries: dict[str, RouteEntry] = {}
    # Routes without a `requests` section share one surface per token ceiling (10,000 routes
    # build in a fraction of the time).
    shared: dict[int | None, RequestSurface] = {}
    for route, route_config in config.routes.items():
        contract = route_contract(route, route_config)
        rollout = (rollouts or {}).get(route)
        stable_ref = rollout.stable if rollout is not None else route_config.stable
        ceiling = route_config.max_tokens
        limit = ceiling or config.limits.max_tokens
        if route_config.requests is None and limit in shared:
            requests = shared[limit]
        else:
            requests = RequestSurface.build(
                config.requests.overridden_by(route_config.requests), limit
            )
            if route_config.requests is None:
                shared[limit] = requests
        if rollout is None or rollout.candidate is None:
            stable = _target(route, stable_ref, "stable", config.base_model, contract, ceiling)
            entries[route] = RouteEntry(stable=stable, requests=requests)
            continue
        stable = _target(route, stable_ref, "stable", config.base_model, contract, ceiling, rollout)
        candidate = _target(
            route, rollout.candidate, "candidate", config.base_model, contract, ceiling, rollout
        )
        entries[route] = RouteEntry(
            stable=stable,
            candidate=candidate,
            rollout=rollout,
            requests=requests,
            shadow_category=route_config.shadow_category,
        )
    return RoutingTable(entries=MappingProxyType(entries))


class PublishedTable:
    """The routing table in force; the control plane swaps it in one step, requests read it."""

    def __init__(self, table: RoutingTable) -> None:
        self.current = table

    def publish(self, table: RoutingTable) -> None:
        self.current = table

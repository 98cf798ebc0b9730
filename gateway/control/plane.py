"""The control plane: applies config files and rollout changes by publishing new routing tables.

Every change takes the same path: the adapter versions the new table needs are verified and
loaded onto the backends first, then the table is swapped in one step, then versions no route
uses are unloaded. A config file that fails anywhere on that path is refused, logged and
metered, and the table in force keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

from adapters.errors import AdapterStoreUnreadable
from gateway.config import TurnoutConfig, load_config
from gateway.errors import ConfigError, Failure, RolloutConflict, TurnoutError
from gateway.placement.loads import AdapterLoads
from gateway.placement.warm import routed_versions, warm_versions
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.model import Rollout
from gateway.routing.table import (
    AdapterVersion,
    PublishedTable,
    build_routing_table,
    declared_rollouts,
)
from gateway.upstream.adapter_loader import AdapterLoader
from monitoring import metrics

log = logging.getLogger("turnout.control")

# Sections a running gateway cannot change: they shape sockets, pools, stores and the objects
# built at start-up. A changed file applies its routes; for these it logs and keeps what runs.
_RESTART_ONLY = (
    "server", "backends", "timeouts", "state", "embedded", "base_model", "adapters",
    "monitoring", "auth", "limits", "admission", "breaker", "capture",
)  # fmt: skip


class CandidateRejected(RolloutConflict):
    """A rollout's candidate cannot be served (missing, invalid, or a backend refused it)."""

    failure = Failure.INVALID_VALUE
    code = "candidate_rejected"


class ControlPlane:
    """Owns the config in force and publishes the routing table for it and the rollouts."""

    def __init__(
        self,
        config: TurnoutConfig,
        config_path: Path | None,
        table: PublishedTable,
        loader: AdapterLoader,
        placement: AdapterLoads | None = None,
    ) -> None:
        self.config = config
        self._path = config_path
        self._table = table
        self._loader = loader
        self._placement = placement  # adapters.placement demand
        self._applied_digest = _digest(config_path) if config_path else None

    def publish(self, rollouts: Mapping[str, Rollout]) -> None:
        """The rollout controller's callback: in force for the very next request."""
        table = build_routing_table(self.config, rollouts)
        self._loader.route(table.adapter_versions())
        self._table.publish(table)
        if self._placement is not None:
            self._placement.publish(
                routed_versions(table), warm_versions(table, self.config.routes)
            )

    async def start(self, controller: RolloutController) -> None:
        """Load what the config routes to, restore rollout state, then load what the resulting
        table routes to (or refuse).

        The config's own versions load before the state store is opened, so a config the
        backends cannot serve fails the start before it records a rollout as started.
        """
        declared = declared_rollouts(self.config)
        configured = build_routing_table(self.config, declared).adapter_versions()
        await self._loader.prepare(configured)
        await controller.open(declared)
        if self._table.current.adapter_versions() != configured:
            await self._loader.prepare(self._table.current.adapter_versions())
        await self._loader.release()
        if self._placement is not None:  # the table published before the loop ran (or again)
            table = self._table.current
            self._placement.publish(
                routed_versions(table), warm_versions(table, self.config.routes)
            )

    async def prepare_candidate(self, route: str, candidate: str) -> None:
        """Load a rollout's candidate everywhere before the rollout may start."""
        versions = self._table.current.adapter_versions() | {AdapterVersion.parse(candidate)}
        try:
            await self._loader.prepare(versions)
        except (ConfigError, AdapterStoreUnreadable) as error:
            raise CandidateRejected(f"Route `{route}`: {error.message}") from None

    async def reload(self, controller: RolloutController) -> None:
        """Apply the config file as it is now, or raise and leave everything as it was."""
        assert self._path is not None
        new = await asyncio.to_thread(load_config, self._path)
        for section in _RESTART_ONLY:
            if getattr(new, section) != getattr(self.config, section):
                log.warning("config: %s changed; it takes effect at the next restart", section)
                new = new.model_copy(update={section: getattr(self.config, section)})
        declared = declared_rollouts(new)
        needed = build_routing_table(new, declared).adapter_versions()
        await self._loader.prepare(needed | self._table.current.adapter_versions())
        self.config = new
        await controller.apply_config(declared)
        await self._loader.release()

    async def watch(self, controller: RolloutController, interval_s: float) -> None:
        """Reload whenever the file's contents change (ConfigMaps swap files under us).

        A change is applied once two polls in a row read the same contents, so a file caught
        half-written by an editor is never taken for the new config.
        """
        assert self._path is not None
        seen: str | None = self._applied_digest
        while True:
            await asyncio.sleep(interval_s)
            digest = await asyncio.to_thread(_digest, self._path)
            settled = digest == seen
            seen = digest
            if digest is None or digest == self._applied_digest or not settled:
                continue
            self._applied_digest = digest  # a refused file is not retried until it changes
            try:
                await self.reload(controller)
            except TurnoutError as error:
                metrics.CONFIG_RELOADS.labels("rejected").inc()
                log.error(
                    "config %s refused, the previous one keeps serving: %s",
                    self._path,
                    error.message,
                )
                continue
            metrics.CONFIG_RELOADS.labels("applied").inc()
            log.info("config %s applied", self._path)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None

"""Put each routed adapter version on every backend before traffic reaches it; unload unused ones.

The data plane only sends a request to a backend that holds its adapter (`Residency`); this module
keeps that true: `prepare` verifies and loads the versions a new routing table needs before it is
published, `release` unloads what no route uses any more, and `run` re-checks every backend every
few seconds, so a vLLM that restarted (and forgot its adapters) is reloaded without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from adapters.base_model import BaseModelProfile
from adapters.errors import AdapterError, AdapterLoadFailed, AdapterStoreUnreadable
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import AdaptersConfig
from gateway.errors import BackendTimeout, ConfigError, TurnoutError
from gateway.routing.table import AdapterVersion
from gateway.upstream.backends import UpstreamClient
from gateway.upstream.residency import Residency
from monitoring import metrics

log = logging.getLogger("turnout.adapters")

# Listing a busy vLLM's models can take a while on a CPU; only an unreachable one is emptied.
LIST_TIMEOUT_S = 10.0


class VllmAdapterAdmin:
    """vLLM's adapter endpoints: list, load (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`), unload."""

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    async def resident(self, backend: str) -> frozenset[str]:
        reply = await self._client.get(backend, "/v1/models", LIST_TIMEOUT_S)
        if reply.status != 200:
            raise AdapterLoadFailed(f"{backend}/v1/models answered {reply.status}")
        cards = orjson.loads(reply.body).get("data", [])
        return frozenset(card["id"] for card in cards if card.get("parent"))

    async def load(self, backend: str, served_name: str, path: str) -> None:
        body = orjson.dumps({"lora_name": served_name, "lora_path": path})
        reply = await self._client.post(backend, "/v1/load_lora_adapter", body, "turnout-loader")
        if reply.status == 200 or b"has already been loaded" in reply.body:
            return
        raise AdapterLoadFailed(
            f"{backend} refused to load {served_name}: {reply.status} "
            f"{reply.body[:300].decode(errors='replace')}"
        )

    async def unload(self, backend: str, served_name: str) -> None:
        body = orjson.dumps({"lora_name": served_name})
        reply = await self._client.post(backend, "/v1/unload_lora_adapter", body, "turnout-loader")
        if reply.status not in (200, 404):
            raise AdapterLoadFailed(f"{backend} refused to unload {served_name}: {reply.status}")


def check_capacity(versions: int, config: AdaptersConfig) -> None:
    """ConfigError when the routes name more versions than the backends keep in memory
    (placement `everywhere` only: `demand` places any number)."""
    if config.placement == "everywhere" and versions > config.capacity:
        raise ConfigError(
            f"routes send traffic to {versions} adapter versions, but the backends keep "
            f"at most {config.capacity} in memory (adapters.max_cpu_loras); "
            "more would reload adapters from disk on the request path. Route fewer versions, "
            "raise adapters.max_cpu_loras if the backends have the memory for them, or set "
            "adapters.placement: demand to load versions where and when traffic needs them."
        )


@dataclass(frozen=True, slots=True)
class LoadTarget:
    version: AdapterVersion
    path: str  # where the backends read it


class AdapterLoader:
    """Reconciles the routed adapter versions onto every backend."""

    def __init__(
        self,
        registry: AdapterRegistry,
        base_model: str,
        config: AdaptersConfig,
        admin: VllmAdapterAdmin,
        residency: Residency,
        backends: Sequence[str],
    ) -> None:
        self._registry = registry
        self._base_model = base_model
        self._base: BaseModelProfile | None = None  # read from the store on first use
        self._config = config
        self._limits = AdapterLimits(max_lora_rank=config.max_lora_rank)
        self._admin = admin
        self._residency = residency
        self._backends = tuple(backends)
        self._routed: frozenset[AdapterVersion] = frozenset()
        self._loaded_here: dict[str, set[str]] = {backend: set() for backend in self._backends}
        self._lock = asyncio.Lock()  # prepare, release and reconcile never interleave
        self._verified: set[AdapterVersion] = set()
        for backend in self._backends:
            metrics.ADAPTER_CAPACITY.labels(backend).set(config.capacity)

    def _backend_path(self, version: AdapterVersion) -> str:
        if self._config.backend_path is not None:
            return f"{self._config.backend_path.rstrip('/')}/{version.name}/{version.version}"
        folder = self._registry.local_folder(version.name, version.version)
        if folder is None:
            raise ConfigError(
                f"adapters.backend_path: the store {self._registry.url} is not a local folder, "
                "so say where the vLLM servers see it"
            )
        return str(folder.resolve())

    def _verify(self, version: AdapterVersion) -> LoadTarget:
        if self._base is None:
            try:
                self._base = self._registry.base(self._base_model)
            except AdapterError as error:
                raise ConfigError(f"base_model: {error.message}") from None
            except Exception as error:  # fsspec's stores raise their own (botocore's, ...)
                raise AdapterStoreUnreadable(
                    f"adapters.store: {self._registry.url} cannot be read: {error}"
                ) from None
        try:
            self._registry.verify(version.name, version.version, self._base, self._limits)
        except AdapterError as error:
            raise ConfigError(f"adapter {version.ref}: {error.message}") from None
        except Exception as error:  # fsspec's stores raise their own (botocore's, ...)
            raise AdapterStoreUnreadable(
                f"adapter {version.ref}: the store {self._registry.url} cannot be read: {error}"
            ) from None
        return LoadTarget(version=version, path=self._backend_path(version))

    async def prepare(self, versions: frozenset[AdapterVersion]) -> None:
        """Verify `versions` and load them on every reachable backend, or raise `ConfigError`
        (`AdapterStoreUnreadable` when the store cannot be read).

        Nothing changes for traffic until the caller publishes the table that routes to them;
        on failure the versions this call loaded are unloaded again.
        """
        async with self._lock:
            await self._prepare(versions)

    async def _prepare(self, versions: frozenset[AdapterVersion]) -> None:
        if self._config.placement == "demand":
            # Loaded where and when traffic needs them (gateway.placement); verified once here
            # and again before each load.
            unverified = sorted(versions - self._verified, key=lambda v: v.ref)
            if unverified:
                await asyncio.to_thread(self._verify_all, unverified)
            self._routed = versions
            metrics.ADAPTERS_ROUTED.set(len(versions))
            return
        check_capacity(len(versions), self._config)
        targets = []
        for version in sorted(versions, key=lambda v: v.ref):
            targets.append(await asyncio.to_thread(self._verify, version))
        fresh: list[tuple[str, str]] = []
        try:
            for backend in self._backends if targets else ():
                fresh += await self._load_missing(backend, targets)
        except AdapterLoadFailed as error:
            for backend, served_name in fresh:
                await self._unload(backend, served_name)
            raise ConfigError(error.message) from None
        self._routed = versions
        metrics.ADAPTERS_ROUTED.set(len(versions))

    def _verify_all(self, versions: list[AdapterVersion]) -> None:
        for version in versions:
            self._verify(version)
            self._verified.add(version)

    async def load_on_demand(self, backend: str, served_name: str) -> None:
        """Verify the version again and load it onto `backend` (placement's `AdapterCalls`)."""
        target = await asyncio.to_thread(self._verify, AdapterVersion.parse(served_name))
        await self._load(backend, served_name, target.path)

    async def unload_on_demand(self, backend: str, served_name: str) -> None:
        await self._unload(backend, served_name)

    def route(self, versions: frozenset[AdapterVersion]) -> None:
        """The versions now routed (a published table); missing ones load at the next check."""
        self._routed = versions
        metrics.ADAPTERS_ROUTED.set(len(versions))

    async def release(self) -> None:
        """Unload what this gateway loaded and no route uses any more."""
        async with self._lock:
            if self._config.placement == "demand":
                return  # placement unloads versions no route names (`FleetPlacement.unrouted`)
            keep = {version.served_name for version in self._routed}
            for backend in self._backends:
                for served_name in sorted(self._loaded_here[backend] - keep):
                    await self._unload(backend, served_name)

    async def reconcile(self) -> None:
        """Check every backend once; reload what it lost (a restart) and mark what it holds."""
        async with self._lock:
            if not self._routed or self._config.placement == "demand":
                return  # demand: placement reloads what a backend lost when vLLM says so
            targets = [
                LoadTarget(version=v, path=self._backend_path(v))
                for v in sorted(self._routed, key=lambda v: v.ref)
            ]
            for backend in self._backends:
                try:
                    await self._load_missing(backend, targets, reverify=True)
                except TurnoutError as error:
                    log.warning("reconciling adapters on %s failed: %s", backend, error.message)

    async def run(self) -> None:
        """Reconcile forever, every `adapters.reconcile_interval_s`."""
        while True:
            await asyncio.sleep(self._config.reconcile_interval_s)
            await self.reconcile()

    async def _load_missing(
        self, backend: str, targets: Sequence[LoadTarget], *, reverify: bool = False
    ) -> list[tuple[str, str]]:
        """Load the targets `backend` lacks; returns the (backend, name) pairs this call loaded."""
        try:
            present = await self._admin.resident(backend)
        except BackendTimeout:
            return []  # busy, not gone: keep sending it what it holds
        except TurnoutError as error:
            log.warning("backend %s cannot list its adapters: %s", backend, error.message)
            self._residency.lose_track(backend)
            return []
        loaded = []
        for target in targets:
            served_name = target.version.served_name
            if served_name in present:
                continue
            if reverify:
                await asyncio.to_thread(self._verify, target.version)
            await self._load(backend, served_name, target.path)
            present |= {served_name}
            loaded.append((backend, served_name))
        routed = {t.version.served_name for t in targets}
        self._residency.set(backend, present & (routed | self._residency.held(backend)))
        return loaded

    async def _load(self, backend: str, served_name: str, path: str) -> None:
        started = time.perf_counter()
        try:
            await self._admin.load(backend, served_name, path)
        except TurnoutError:
            metrics.ADAPTER_LOADS.labels(backend, "failed").inc()
            raise
        metrics.ADAPTER_LOADS.labels(backend, "loaded").inc()
        metrics.ADAPTER_LOAD_DURATION.labels(backend).observe(time.perf_counter() - started)
        self._loaded_here[backend].add(served_name)
        log.info("loaded %s on %s in %.3f s", served_name, backend, time.perf_counter() - started)

    async def _unload(self, backend: str, served_name: str) -> None:
        try:
            await self._admin.unload(backend, served_name)
        except TurnoutError as error:
            log.warning("unloading %s from %s failed: %s", served_name, backend, error.message)
            return
        metrics.ADAPTER_UNLOADS.labels(backend).inc()
        self._loaded_here[backend].discard(served_name)
        self._residency.forget(backend, served_name)

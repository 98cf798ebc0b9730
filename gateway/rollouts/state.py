"""Where runtime rollout state lives: a file for one process, Redis for several replicas.

A store keeps one `Rollout` per route. `save` refuses a lost update (a record whose revision is
not above the stored one) with `RolloutConflict`. A store shared by replicas calls the
`on_change` callback given to `open` whenever another replica saved a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import StateConfig
from gateway.errors import RolloutConflict, StateStoreUnavailable
from gateway.rollouts.model import Rollout
from monitoring.metrics import STATE_STORE_UP

log = logging.getLogger("turnout.state")

OnChange = Callable[[Rollout], None]


def rollout_to_json(rollout: Rollout) -> bytes:
    return orjson.dumps(asdict(rollout))


def rollout_from_json(raw: bytes | str) -> Rollout:
    fields: dict[str, Any] = orjson.loads(raw)
    fields["steps"] = tuple(fields["steps"])
    return Rollout(**fields)


class RolloutStateStore(Protocol):
    """Runtime rollout state: loaded at start, saved on every change."""

    async def open(self, on_change: OnChange) -> dict[str, Rollout]:
        """Start; return the stored rollouts (empty when none or unreachable)."""
        ...

    async def save(self, rollout: Rollout) -> None:
        """Store one route's rollout (and announce it to other replicas, if any)."""
        ...

    async def close(self) -> None: ...


def _check_revision(stored: Rollout | None, rollout: Rollout) -> None:
    if stored is not None and stored.revision >= rollout.revision:
        raise RolloutConflict(
            f"The rollout on `{rollout.route}` changed meanwhile (revision {stored.revision});"
            " read it again and retry."
        )


class FileStateStore:
    """One process: state in memory, written whole to a JSON file on every change.

    Each write goes to a temporary file in the same folder, is fsynced, and replaces the old
    file with `os.replace` (then the folder is fsynced), so a crash leaves the old or the new
    state, never half of one. Writes run in a thread, off the event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rollouts: dict[str, Rollout] = {}
        self._lock = asyncio.Lock()

    async def open(self, on_change: OnChange) -> dict[str, Rollout]:
        self._rollouts = await asyncio.to_thread(self._read)
        STATE_STORE_UP.set(1)
        return dict(self._rollouts)

    def _read(self) -> dict[str, Rollout]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        return {
            route: rollout_from_json(orjson.dumps(fields))
            for route, fields in orjson.loads(raw).items()
        }

    async def save(self, rollout: Rollout) -> None:
        async with self._lock:
            _check_revision(self._rollouts.get(rollout.route), rollout)
            updated = {**self._rollouts, rollout.route: rollout}
            await asyncio.to_thread(self._write, updated)
            self._rollouts = updated

    def _write(self, rollouts: Mapping[str, Rollout]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps({route: asdict(r) for route, r in rollouts.items()})
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".rollouts-")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    async def close(self) -> None:
        return None


# Set the route's record only if its revision is newer, and announce it, in one atomic step.
_SAVE_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local revision = cjson.decode(stored)['revision']
  if revision >= tonumber(ARGV[3]) then return revision end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return -1
"""
RECONNECT_DELAY_S = 0.5


class RedisStateStore:
    """Several replicas: state in a Redis hash, every change announced on a pub/sub channel.

    A listener task applies other replicas' changes as they come (milliseconds). When Redis
    cannot be reached the store keeps the last known state, sets `turnout_state_store_up` to 0,
    refuses `save` with `StateStoreUnavailable`, and retries; on reconnecting it reloads the
    hash, so changes missed meanwhile are applied too.
    """

    def __init__(self, url: str, prefix: str = "turnout") -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=5
        )
        self._hash = f"{prefix}:rollouts"
        self._channel = f"{prefix}:rollouts:changes"
        self._save_script = self._client.register_script(_SAVE_SCRIPT)
        self._known: dict[str, Rollout] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.up = False

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            log.warning("rollout state store %s", "reachable" if up else "unreachable")
        self.up = up
        STATE_STORE_UP.set(1 if up else 0)

    async def open(self, on_change: OnChange) -> dict[str, Rollout]:
        self._listener = asyncio.create_task(self._listen(on_change))
        try:
            await self._load(on_change=None)
        except (RedisError, OSError):
            self._set_up(False)
            return {}
        # The subscription must be live before we report ready, or a change could slip by.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)
        return dict(self._known)

    async def _load(self, on_change: OnChange | None) -> None:
        raw: dict[bytes | str, bytes | str] = await self._client.hgetall(self._hash)
        for value in raw.values():
            self._apply(rollout_from_json(value), on_change)
        self._set_up(True)

    def _apply(self, rollout: Rollout, on_change: OnChange | None) -> None:
        known = self._known.get(rollout.route)
        if known is not None and known.revision >= rollout.revision:
            return
        self._known[rollout.route] = rollout
        if on_change is not None:
            on_change(rollout)

    async def _listen(self, on_change: OnChange) -> None:
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    await self._load(on_change)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._apply(rollout_from_json(message["data"]), on_change)
            except (RedisError, OSError) as error:
                self._subscribed.clear()
                self._set_up(False)
                log.debug("state store listener: %s", error)
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def save(self, rollout: Rollout) -> None:
        try:
            stored = await self._save_script(
                keys=[self._hash, self._channel],
                args=[rollout.route, rollout_to_json(rollout), rollout.revision],
            )
        except (RedisError, OSError) as error:
            self._set_up(False)
            raise StateStoreUnavailable(
                f"The shared rollout state (Redis) cannot be reached: {error}. Nothing changed."
            ) from None
        if int(stored) >= 0:
            raise RolloutConflict(
                f"The rollout on `{rollout.route}` changed meanwhile on another replica"
                f" (revision {int(stored)}); read it again and retry."
            )
        self._known[rollout.route] = rollout

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()


def state_store_for(state: StateConfig) -> RolloutStateStore:
    """Redis when replicas share rollout state, else the file in the state folder."""
    if state.redis_url:
        return RedisStateStore(state.redis_url)
    return FileStateStore(Path(state.dir) / "rollouts.json")


async def stored_rollouts(state: StateConfig) -> dict[str, Rollout]:
    """The rollouts as the running gateways know them, read once; StateStoreUnavailable when
    the shared store cannot be reached (an empty answer would look like no rollouts)."""
    store = state_store_for(state)
    try:
        rollouts = await store.open(lambda rollout: None)
        if isinstance(store, RedisStateStore) and not store.up:
            raise StateStoreUnavailable(
                f"The shared rollout state (Redis at {state.redis_url}) cannot be reached."
            )
        return rollouts
    finally:
        await store.close()

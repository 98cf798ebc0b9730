"""Starting the gateway: the checks that need no server, the sockets it will listen on, the
banner once `/readyz` answers, and a failed start as one paragraph with its exit status.

Exit statuses: 2 when the fix is in the input (the config file, the command line, the adapter
store's contents), 1 when a process, port or service the start depends on failed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from adapters.errors import AdapterError, AdapterNotFound, AdapterRefused, AdapterStoreUnreadable
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import ServerConfig, TurnoutConfig
from gateway.errors import ConfigError, StateStoreUnavailable, TurnoutError
from gateway.gc_pause import gc_paused
from gateway.routing.table import AdapterVersion, build_routing_table
from gateway.upstream.adapter_loader import check_capacity

EXIT_INPUT = 2
EXIT_RUNTIME = 1
# How long a start waits for Redis (a pod may start beside it) before it gives up.
REDIS_WAIT_S = 5.0
# How long the banner waits for `/readyz` before saying what it is waiting for.
READY_HINT_AFTER_S = 10.0

Say = Callable[[str], None]


class StartupFailure(TurnoutError):
    """What stops a start (met while starting, or found by `config check` before): the message
    is the paragraph to show; `exit_status` says whose fix it is (2: the input, 1: the run)."""

    code = "startup_failure"

    def __init__(self, message: str, *, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class PortInUse(TurnoutError):
    """Another program listens on a port the gateway needs."""

    code = "port_in_use"


def exit_status(error: BaseException) -> int:
    """2 for an error in the config, the command line or the store's contents, else 1."""
    if isinstance(error, ConfigError | AdapterNotFound | AdapterRefused):
        return EXIT_INPUT
    return EXIT_RUNTIME


def startup_failure(
    error: BaseException, prefix: str = "the gateway did not start: "
) -> StartupFailure:
    """The paragraph for a failed start, from the error that stopped it."""
    if isinstance(error, StartupFailure):
        return error
    if isinstance(error, TurnoutError):
        cause = error.message
    else:  # not one of ours: say what it was; --debug shows where
        cause = f"{type(error).__name__}: {error} (--debug or TURNOUT_DEBUG=1 shows the traceback)"
    return StartupFailure(f"{prefix}{cause}", exit_status=exit_status(error))


@contextmanager
def reported_as_start_failure() -> Iterator[None]:
    """Any error inside becomes `StartupFailure`, the original as its cause (for --debug);
    Ctrl-C and exits pass through."""
    try:
        yield
    except Exception as error:
        raise startup_failure(error) from error


# --- checks before anything starts ----------------------------------------------------------


def routed_versions(config: TurnoutConfig) -> dict[str, list[str]]:
    """Each adapter version the config's routes name, with the keys that name it."""
    named: dict[str, list[str]] = {}
    for route, settings in config.routes.items():
        for arm, ref in (("stable", settings.stable), ("candidate", settings.candidate)):
            if ref is not None:
                named.setdefault(ref, []).append(f"routes.{route}.{arm}")
    return named


def local_store(config: TurnoutConfig) -> Path | None:
    """The adapter store's folder when it is a path on this machine (not an fsspec URL)."""
    store = config.adapters.store
    return None if "://" in store else Path(store)


@gc_paused()  # 10,000 manifests read: nothing they allocate is garbage
def check_adapters(config: TurnoutConfig, *, verify: bool) -> int:
    """What would stop a start at the adapters, found before one: capacity, a store that is no
    folder or cannot be read, a version missing from it, and with `verify` one that fails
    verification (its files are read and hashed). Returns the number of versions checked."""
    named = routed_versions(config)
    check_capacity(len(named), config.adapters)
    if not named:
        return 0
    folder = local_store(config)
    if folder is not None and not folder.is_dir():
        raise ConfigError(
            f"adapters.store: {folder} is not a folder, and the routes name adapter versions "
            f"({', '.join(sorted(named))}). Point adapters.store at the adapter registry, or "
            f"write the demo one with `turnout demo-model {folder.parent}`."
        )
    limits = AdapterLimits(max_lora_rank=config.adapters.max_lora_rank)
    try:
        registry = AdapterRegistry(config.adapters.store)
        try:
            base = registry.base(config.base_model)
        except AdapterError as error:
            raise ConfigError(f"base_model: {error.message}") from None
        for ref, keys in sorted(named.items()):
            version = AdapterVersion.parse(ref)
            try:
                if verify:
                    registry.verify(version.name, version.version, base, limits)
                else:
                    registry.manifest(version.name, version.version)
            except AdapterNotFound as error:
                raise ConfigError(
                    f"{', '.join(keys)}: {error.message}. `turnout adapters list` shows the "
                    "versions in the store; `turnout adapters push` adds one."
                ) from None
            except AdapterError as error:
                raise ConfigError(
                    f"{', '.join(keys)}: {ref} {error.message}. Route another version, or push "
                    "a corrected one under a new version."
                ) from None
    except TurnoutError:
        raise
    except Exception as error:  # fsspec's stores raise their own (botocore's, ...)
        raise AdapterStoreUnreadable(
            f"adapters.store: {config.adapters.store} cannot be read: {error}. Check the path, "
            "or the object store's address and credentials."
        ) from None
    return len(named)


def check_adapters_from_here(config: TurnoutConfig) -> str | None:
    """`config check`: `check_adapters` when the store is a folder on this machine; else only
    the capacity (the store is a deployment's path, or object storage this machine may not
    reach), and the returned note says so."""
    named = routed_versions(config)
    folder = local_store(config)
    if named and (folder is None or not folder.is_dir()):
        check_capacity(len(named), config.adapters)
        return (
            f"adapter versions not checked: the store {config.adapters.store} is not a folder "
            "on this machine"
        )
    check_adapters(config, verify=True)
    return None


def check_key_files(config: TurnoutConfig) -> None:
    """The API and admin key files load (read again when the gateway is built)."""
    from gateway.protection.auth import load_admin_keyring, load_tenant_keyring

    if config.auth.keys_file:
        load_tenant_keyring(Path(config.auth.keys_file))
    if config.auth.admin_keys_file:
        load_admin_keyring(Path(config.auth.admin_keys_file))


def check_embedded_model(config: TurnoutConfig) -> None:
    """`turnout up` needs the base model's folder on this machine."""
    model = Path(config.embedded.model)
    if not model.is_dir():
        raise ConfigError(
            f"embedded.model: no base model at {model}. Generate the demo model with "
            f"`turnout demo-model {model.parent}`, or point embedded.model at a model folder."
        )


def redacted(url: str) -> str:
    """`url` without its password (a Redis URL may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_redis(url: str, wait_s: float = REDIS_WAIT_S) -> None:
    """Wait up to `wait_s` for Redis to answer a PING; StateStoreUnavailable if it does not.

    A replica that loses Redis while serving keeps its last table; one that starts without it
    has no table but the config's, which may contradict the other replicas' rollouts.
    """
    import redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                client.ping()
                return
            except (RedisError, OSError) as error:
                if time.monotonic() >= deadline:
                    raise StateStoreUnavailable(
                        f"Redis at {redacted(url)} (state.redis_url) did not answer within "
                        f"{wait_s:.0f} s: {error} Replicas share rollout state and rate limits "
                        "through it: start Redis, or correct state.redis_url (or "
                        "TURNOUT_REDIS_URL)."
                    ) from None
            time.sleep(0.25)
    finally:
        client.close()


# --- the sockets ------------------------------------------------------------------------------


@dataclass(slots=True)
class Listeners:
    """The gateway's socket, and the admin API's and `/metrics`' when they have their own
    ports; bound, not yet listening (connections are refused until the gateway serves)."""

    gateway: socket.socket
    admin: socket.socket | None
    metrics: socket.socket | None = None

    @property
    def port(self) -> int:
        port: int = self.gateway.getsockname()[1]
        return port

    def close(self) -> None:
        for sock in (self.gateway, self.admin, self.metrics):
            if sock is not None:
                sock.close()


def _bind(host: str, port: int, key: str, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as error:
        sock.close()
        raise ConfigError(
            f"server.host: {host} is not a known address ({error.strerror})."
        ) from None
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            hint = "`--port N` or " if key == "server.port" else ""
            raise PortInUse(
                f"port {port} on {host} ({key}) is already in use by another program. Stop "
                f"that program, or choose a free port with {hint}{key}."
            ) from None
        if error.errno == errno.EACCES:
            raise PortInUse(
                f"not allowed to listen on port {port} ({key}): ports below 1024 need "
                f"privileges. Choose a port above 1024 with {key}."
            ) from None
        raise ConfigError(f"server.host: cannot listen on {host}: {error.strerror}.") from None
    return sock


def bind_listeners(server: ServerConfig, *, reuse_port: bool = False) -> Listeners:
    """Bind `server.port` (and `server.admin_port`, `server.metrics_port`) now, so a taken port
    fails the start before anything else is started, naming the key."""
    bind = functools.partial(_bind, reuse_port=reuse_port)
    listeners = Listeners(bind(server.host, server.port, "server.port"), None)
    try:
        if server.admin_port is not None:
            listeners.admin = bind(server.host, server.admin_port, "server.admin_port")
        if server.metrics_port is not None:
            listeners.metrics = bind(server.host, server.metrics_port, "server.metrics_port")
    except BaseException:
        listeners.close()
        raise
    return listeners


def _port(sock: socket.socket | None) -> int | None:
    return None if sock is None else int(sock.getsockname()[1])


def bind_worker_listeners(server: ServerConfig) -> list[Listeners]:
    """One set of listeners per worker (`server.workers`), all on the same ports, each socket
    with SO_REUSEPORT: the kernel spreads new connections over the workers' sockets.

    The ports are first bound once without SO_REUSEPORT and let go, so a port that another
    program holds fails the start as with one worker, instead of that program quietly getting
    a share of the connections (SO_REUSEPORT lets any socket of the same user that also sets
    it join the port).
    """
    probe = bind_listeners(server)
    ports = {
        "port": probe.port,
        "admin_port": _port(probe.admin),
        "metrics_port": _port(probe.metrics),
    }
    probe.close()
    same = server.model_copy(update=ports)
    sets: list[Listeners] = []
    try:
        for _ in range(server.workers):
            sets.append(bind_listeners(same, reuse_port=True))
    except BaseException:
        for listeners in sets:
            listeners.close()
        raise
    return sets


# --- the banner, once ready -----------------------------------------------------------------


def _loopback(host: str) -> str:
    """Where this machine reaches a server bound to `host` (a wildcard means every address)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def origin(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def banner(config: TurnoutConfig, port: int, upstream: str, stop: str) -> str:
    """What `turnout up` and `turnout serve` print once the gateway is ready."""
    at = origin(config.server.host, port)
    table = build_routing_table(config)
    lines = [f"Turnout serves on {at}  ({upstream})", "Routes (send the route as `model`):"]
    for route, entry in table.entries.items():
        target = entry.stable
        serves = target.adapter.ref if target.adapter else f"the base model `{config.base_model}`"
        lines.append(f"  {route:<24} -> {serves}")
    example = next(iter(table.entries), "ROUTE")
    body = json.dumps(
        {"model": example, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
    )
    lines.append("Try:")
    lines.append(
        f"  curl -s {at}/v1/chat/completions -H 'content-type: application/json' -d '{body}'"
    )
    if config.server.admin_port is not None:
        lines.append(f"Admin API: {origin(config.server.host, config.server.admin_port)}/admin")
    lines.append(stop)
    return "\n".join(lines)


async def answers_ready(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether `GET /readyz` on the gateway answers 200 (a plain HTTP/1.1 exchange)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: turnout\r\nConnection: close\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        return status_line.split()[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def announce_when_ready(
    config: TurnoutConfig,
    port: int,
    text: str,
    say: Say,
    poll_s: float = 0.2,
    hint_after_s: float = READY_HINT_AFTER_S,
) -> None:
    """Say `text` once `/readyz` answers 200; meanwhile, after `hint_after_s`, say once what
    the gateway waits for."""
    host = _loopback(config.server.host)
    deadline = time.monotonic() + hint_after_s
    hinted = False
    while not await answers_ready(host, port):
        if not hinted and time.monotonic() > deadline:
            backends = ", ".join(backend.url for backend in config.backends)
            say(
                f"Not ready yet: no backend answers ({backends}). The gateway listens and "
                "answers 503 until one does."
            )
            hinted = True
        await asyncio.sleep(poll_s)
    say(text)


def loading_line(config: TurnoutConfig) -> str | None:
    """The progress line for loading the routed adapter versions, if there are any."""
    count = len(routed_versions(config))
    if count == 0:
        return None
    backends = len(config.backends)
    return (
        f"Loading {count} adapter version{'s' if count != 1 else ''} onto "
        f"{backends} backend{'s' if backends != 1 else ''} ..."
    )

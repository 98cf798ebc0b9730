"""Runs the gateway under uvicorn (uvloop + httptools: the fastest pair measured here), the
admin API on its own listener when `server.admin_port` is set, and `/metrics` on its own when
`server.metrics_port` is (`gateway.serving.listeners`), on sockets bound beforehand."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from prometheus_client import REGISTRY, CollectorRegistry

from gateway.config import TurnoutConfig
from gateway.serving.app import create_app
from gateway.serving.listeners import place_metrics
from gateway.serving.startup import Listeners, Say, announce_when_ready, loading_line
from gateway.serving.transport import CoalescingHttpToolsProtocol, counting_protocol

log = logging.getLogger("turnout.server")


def _server(
    app: Any,
    host: str,
    port: int,
    http: type[CoalescingHttpToolsProtocol] = CoalescingHttpToolsProtocol,
    **options: Any,
) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http=http,
            access_log=False,
            log_level=logging.WARNING,
            timeout_graceful_shutdown=30,
            server_header=False,
            proxy_headers=False,  # client addresses are never used; X-Forwarded-* is not trusted
            **options,
        )
    )


def serve(
    config: TurnoutConfig,
    config_path: Path | None,
    listeners: Listeners,
    say: Say,
    ready_text: str | None,
    *,
    worker: int = 0,
    metrics: CollectorRegistry = REGISTRY,
) -> None:
    """Start the gateway, then serve on `listeners` until SIGINT or SIGTERM; `ready_text` is
    said once `/readyz` answers (None: the supervisor of `worker` says it). The config file
    at `config_path` is watched if given; `/metrics` exposes `metrics`.

    The start (rollout state, adapter loads) runs before uvicorn does, so one that fails raises
    here, with what it opened closed, instead of failing uvicorn's lifespan.
    """
    apps = create_app(config, config_path, metrics=metrics)
    if place_metrics(config.server, config.auth).nowhere:
        log.warning(
            "/metrics is served nowhere: tenant keys are configured and neither "
            "server.admin_port nor server.metrics_port is set (or set server.public_metrics)"
        )

    async def run() -> None:
        loading = loading_line(config)
        if loading is not None:
            say(loading)
        await apps.start()
        gateway = _server(
            apps.gateway, config.server.host, listeners.port, http=counting_protocol(worker)
        )
        # The other listeners share the gateway's objects and lifespan. They start first, so
        # the gateway's signal handlers are the ones installed: a SIGTERM drains the gateway,
        # which then re-raises the signal, and that reaches the other servers' restored
        # handlers.
        servers = [
            _server(app, config.server.host, sock.getsockname()[1], lifespan="off").serve(
                sockets=[sock]
            )
            for app, sock in ((apps.admin, listeners.admin), (apps.metrics, listeners.metrics))
            if app is not None and sock is not None
        ]
        servers.append(gateway.serve(sockets=[listeners.gateway]))
        announcing = (
            None
            if ready_text is None
            else asyncio.create_task(
                announce_when_ready(config, listeners.port, ready_text, say), name="announce"
            )
        )
        try:
            await asyncio.gather(*servers)
        finally:
            if announcing is not None:
                announcing.cancel()

    uvloop.run(run())

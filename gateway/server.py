"""Runs the gateway under uvicorn (uvloop + httptools: the fastest pair measured here), the
admin API on its own listener when `server.admin_port` is set, and `/metrics` on its own when
`server.metrics_port` is (`gateway.listeners`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from gateway.app import create_app
from gateway.config import TurnoutConfig
from gateway.http_server import CoalescingHttpToolsProtocol
from gateway.listeners import place_metrics

log = logging.getLogger("turnout.server")


def _server(app: Any, host: str, port: int, **options: Any) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            http=CoalescingHttpToolsProtocol,
            access_log=False,
            log_level=logging.WARNING,
            timeout_graceful_shutdown=30,
            server_header=False,
            proxy_headers=False,  # client addresses are never used; X-Forwarded-* is not trusted
            **options,
        )
    )


def serve(config: TurnoutConfig, config_path: Path | None = None) -> None:
    """Serve until SIGINT or SIGTERM; the config file at `config_path` is watched if given."""
    apps = create_app(config, config_path)
    if place_metrics(config.server, config.auth).nowhere:
        log.warning(
            "/metrics is served nowhere: tenant keys are configured and neither "
            "server.admin_port nor server.metrics_port is set (or set server.public_metrics)"
        )
    gateway = _server(apps.gateway, config.server.host, config.server.port)
    # The other listeners share the gateway's objects and lifespan. They start first, so the
    # gateway's signal handlers are the ones installed: a SIGTERM drains the gateway, which
    # then re-raises the signal, and that reaches the other servers' restored handlers.
    others = [
        _server(app, config.server.host, port, lifespan="off")
        for app, port in (
            (apps.admin, config.server.admin_port),
            (apps.metrics, config.server.metrics_port),
        )
        if app is not None and port is not None
    ]
    if not others:
        gateway.run()
        return

    async def together() -> None:
        await asyncio.gather(*(server.serve() for server in others), gateway.serve())

    uvloop.run(together())

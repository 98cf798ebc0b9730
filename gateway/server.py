"""Runs the gateway under uvicorn (uvloop + httptools: the fastest pair measured here), and the
admin API on its own listener when `server.admin_port` is set."""

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
    gateway = _server(apps.gateway, config.server.host, config.server.port)
    if apps.admin is None or config.server.admin_port is None:
        gateway.run()
        return
    # The admin server shares the gateway's objects and lifespan. It starts first, so the
    # gateway's signal handlers are the ones installed: a SIGTERM drains the gateway, which
    # then re-raises the signal, and that reaches the admin server's restored handlers.
    admin = _server(apps.admin, config.server.host, config.server.admin_port, lifespan="off")

    async def both() -> None:
        await asyncio.gather(admin.serve(), gateway.serve())

    uvloop.run(both())

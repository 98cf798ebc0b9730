"""Runs the gateway under uvicorn (uvloop + httptools: the fastest pair measured here), and the
admin API on its own listener when `server.admin_port` is set, on sockets bound beforehand."""

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
from gateway.startup import Listeners, Say, announce_when_ready, loading_line


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


def serve(
    config: TurnoutConfig,
    config_path: Path | None,
    listeners: Listeners,
    say: Say,
    ready_text: str,
) -> None:
    """Start the gateway, then serve on `listeners` until SIGINT or SIGTERM; `ready_text` is
    said once `/readyz` answers. The config file at `config_path` is watched if given.

    The start (rollout state, adapter loads) runs before uvicorn does, so one that fails raises
    here, with what it opened closed, instead of failing uvicorn's lifespan.
    """
    apps = create_app(config, config_path)

    async def run() -> None:
        loading = loading_line(config)
        if loading is not None:
            say(loading)
        await apps.start()
        gateway = _server(apps.gateway, config.server.host, listeners.port)
        servers = [gateway.serve(sockets=[listeners.gateway])]
        if apps.admin is not None and listeners.admin is not None:
            # The admin server shares the gateway's objects and lifespan. It starts first, so
            # the gateway's signal handlers are the ones installed: a SIGTERM drains the
            # gateway, which then re-raises the signal, and that reaches the admin server's
            # restored handlers.
            admin_port = listeners.admin.getsockname()[1]
            admin = _server(apps.admin, config.server.host, admin_port, lifespan="off")
            servers.insert(0, admin.serve(sockets=[listeners.admin]))
        announcing = asyncio.create_task(
            announce_when_ready(config, listeners.port, ready_text, say), name="announce"
        )
        try:
            await asyncio.gather(*servers)
        finally:
            announcing.cancel()

    uvloop.run(run())

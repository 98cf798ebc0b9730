"""Runs the gateway app under uvicorn (uvloop + httptools: the fastest pair measured here)."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from gateway.app import create_app
from gateway.config import TurnoutConfig


def uvicorn_server(config: TurnoutConfig, config_path: Path | None = None) -> uvicorn.Server:
    """A uvicorn server for the gateway, not yet started; it watches `config_path` if given."""
    app = create_app(config, config_path)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level=logging.WARNING,
            timeout_graceful_shutdown=30,
            server_header=False,
        )
    )

"""Wires the gateway's parts into an ASGI app from a validated config; holds no logic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api.errors import install_error_handlers
from gateway.api.openai import openai_router
from gateway.api.ops import ops_router
from gateway.backends import AiohttpUpstream, BackendPool, UpstreamClient
from gateway.config import TurnoutConfig
from gateway.proxy import InferenceProxy
from gateway.routing import PublishedTable, build_routing_table

def create_app(config: TurnoutConfig, client: UpstreamClient | None = None) -> FastAPI:
    """The gateway for `config`; its backends must be set (the CLI checks, with a clear error)."""
    pool = BackendPool([backend.url for backend in config.backends])
    table = PublishedTable(build_routing_table(config))
    upstream: UpstreamClient = client or AiohttpUpstream(config.timeouts)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upstream.start()
        try:
            yield
        finally:
            await upstream.close()

    app = FastAPI(title="Turnout", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(
        openai_router(table, InferenceProxy(upstream, pool), config.server.max_body_bytes)
    )
    app.include_router(ops_router(pool, upstream))
    return app

"""Top-level ASGI dispatch: inference paths go straight to their handler, the rest to FastAPI."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.openai import InferenceEndpoints


class GatewayASGI:
    """Decides on `scope["path"]` (never on the Host-derived URL) which app serves a request."""

    def __init__(self, inference: InferenceEndpoints, fallback: ASGIApp) -> None:
        self._inference = inference
        self._fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._inference.models:
            await self._inference(scope, receive, send)
        else:
            await self._fallback(scope, receive, send)

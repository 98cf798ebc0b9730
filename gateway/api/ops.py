"""Operational endpoints: liveness and readiness (status only), and Prometheus metrics.

`/healthz` and `/readyz` answer anyone, so they say nothing but a status: no backend address,
and no probe of their own (readiness is read from the periodic probes,
`gateway.upstream.health`). The
per-backend detail is on the admin API (`gateway.api.fleet`). `/metrics` names every route,
version and backend with its traffic, so it is mounted only where the operator's Prometheus
scrapes (`gateway.serving.listeners` decides where).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.responses import Response

from gateway.upstream.health import Readiness


def health_router(readiness: Readiness) -> APIRouter:
    """`/healthz` (the process is up) and `/readyz` (some backend answered its last probe)."""
    router = APIRouter()

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def readyz() -> JSONResponse:
        if readiness.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "unavailable"}, status_code=503)

    router.add_api_route("/healthz", healthz, methods=["GET"], summary="The process is up")
    router.add_api_route(
        "/readyz", readyz, methods=["GET"], summary="A backend answered its last health probe"
    )
    return router


def metrics_router(registry: CollectorRegistry = REGISTRY) -> APIRouter:
    """`/metrics`: the Prometheus exposition of `registry` (this process's metrics, or every
    worker's when the registry reads them all: `gateway.serving.workers`)."""
    router = APIRouter()

    async def metrics_text() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    router.add_api_route(
        "/metrics",
        metrics_text,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,
    )
    return router

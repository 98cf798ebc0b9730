"""Operational endpoints: liveness, readiness (a backend answers) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.backends import BackendPool, UpstreamClient

READINESS_PROBE_TIMEOUT_S = 2.0


def ops_router(pool: BackendPool, client: UpstreamClient) -> APIRouter:
    router = APIRouter()

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def readyz() -> JSONResponse:
        backends = await pool.probe_all(client, READINESS_PROBE_TIMEOUT_S)
        ready = any(backends.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "backends": backends},
            status_code=200 if ready else 503,
        )

    async def metrics_text() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    router.add_api_route("/healthz", healthz, methods=["GET"], summary="The process is up")
    router.add_api_route("/readyz", readyz, methods=["GET"], summary="A backend answers")
    router.add_api_route(
        "/metrics",
        metrics_text,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,
    )
    return router

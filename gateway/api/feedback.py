"""`POST /v1/feedback`: an application attaches a human verdict or a corrected answer to a
request the gateway answered and captured, for the training flywheel.

A tenant may rate only its own requests: any other id, whether it exists or not, is the same
404 `not_found`. Admin keys may rate any tenant's (reviewers). Without authentication anyone
who reaches the gateway may rate any captured request. The body is bounded
(`capture.feedback_max_bytes`) and each call is charged to the tenant's rate limits.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway.api.request_head import read_body
from gateway.errors import Failure, InvalidJSON, NotFound, RequestValidationFailed, TurnoutError
from gateway.protection.auth import Admin
from gateway.protection.guard import RequestGuard
from training.capture import CaptureSink, CaptureUnavailable

RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-]{1,128}$")]

# The writer answers within a batch; past this the capture file is stuck (locked, full disk).
FEEDBACK_TIMEOUT_S = 10.0

__all__ = ["CaptureUnavailable", "feedback_router"]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId = Field(
        description="the answer's x-turnout-request-id, or the x-request-id the client sent"
    )
    rating: int = Field(ge=-1, le=1, description="-1 bad, 0 neutral, 1 good")
    correction: str | None = Field(
        default=None, max_length=100_000, description="the answer it should have been"
    )


class FeedbackAccepted(BaseModel):
    object: Literal["turnout.feedback"] = "turnout.feedback"
    request_id: str
    status: Literal["recorded"] = "recorded"


class AmbiguousRequestId(TurnoutError):
    """A client request id that several tenants used; the gateway's own id is unambiguous."""

    failure = Failure.CONFLICT
    code = "ambiguous_request_id"


def _parse(raw: bytes) -> FeedbackRequest:
    try:
        return FeedbackRequest.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise InvalidJSON("The request body is not valid JSON.") from None
        where = ".".join(str(part) for part in first["loc"])
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise RequestValidationFailed(message, param=where or None) from None


def feedback_router(
    sink: CaptureSink, guard: RequestGuard, max_body_bytes: int, settle_s: float = 0.0
) -> APIRouter:
    """`POST /v1/feedback`. With `settle_s` (several workers write the capture file), feedback
    whose answer is not in the file yet is tried once more after that long: the answer may be
    waiting in another worker's capture queue."""
    router = APIRouter()

    async def written_feedback(
        request_id: str, rating: int, correction: str | None, tenant: str | None, author: str,
        key_id: str | None,
    ) -> str:  # fmt: skip
        written = sink.add_feedback(
            request_id, rating, correction, tenant=tenant, author=author, key_id=key_id
        )
        try:
            return await asyncio.wait_for(asyncio.wrap_future(written), FEEDBACK_TIMEOUT_S)
        except TimeoutError:
            return "unavailable"

    async def give_feedback(request: Request) -> FeedbackAccepted:
        who = guard.caller_or_admin(request.headers.get("authorization"))  # 401 for strangers
        declared = request.headers.get("content-length")
        raw = await read_body(request.receive, declared, max_body_bytes)
        if not isinstance(who, Admin):
            await guard.charge(who, len(raw) // 4 + 1)  # 429 past the tenant's budget
        body = _parse(raw)
        if isinstance(who, Admin):
            tenant, author, key_id = None, f"admin:{who.name}", who.key_id
        elif who is not None:
            tenant, author, key_id = who.tenant.name, f"tenant:{who.tenant.name}", who.key_id
        else:
            tenant, author, key_id = None, "", None
        feedback = (body.request_id, body.rating, body.correction, tenant, author, key_id)
        result = await written_feedback(*feedback)
        if result == "not_found" and settle_s > 0:
            await asyncio.sleep(settle_s)
            result = await written_feedback(*feedback)
        if result == "not_found":
            raise NotFound(
                f"No captured answer with the request id `{body.request_id}` for this API key.",
                param="request_id",
            )
        if result == "ambiguous":
            raise AmbiguousRequestId(
                f"Several tenants sent `{body.request_id}` as x-request-id; give the answer's"
                " x-turnout-request-id instead.",
                param="request_id",
            )
        if result != "written":
            raise CaptureUnavailable("Feedback could not be recorded; retry shortly.")
        return FeedbackAccepted(request_id=body.request_id)

    router.add_api_route(
        "/v1/feedback",
        give_feedback,
        methods=["POST"],
        summary="Rate or correct an answer",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": FeedbackRequest.model_json_schema()}},
            }
        },
    )
    return router

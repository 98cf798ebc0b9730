"""`POST /v1/feedback`: an application attaches a human verdict or a corrected answer to a
request the gateway answered (by its `x-request-id`), for the training flywheel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gateway.errors import TurnoutError
from gateway.guard import RequestGuard
from training.capture import CaptureSink

RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-]{1,128}$")]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId = Field(description="the x-request-id of the answer")
    rating: int = Field(ge=-1, le=1, description="-1 bad, 0 neutral, 1 good")
    correction: str | None = Field(
        default=None, max_length=100_000, description="the answer it should have been"
    )


class FeedbackAccepted(BaseModel):
    object: Literal["turnout.feedback"] = "turnout.feedback"
    request_id: str
    status: Literal["queued"] = "queued"


class CaptureUnavailable(TurnoutError):
    """The capture queue is full or closed; the feedback was not recorded."""

    status = 503
    error_type = "server_error"
    code = "capture_unavailable"
    retry_after_s = 1.0


def feedback_router(sink: CaptureSink, guard: RequestGuard) -> APIRouter:
    router = APIRouter()

    async def give_feedback(body: FeedbackRequest, request: Request) -> FeedbackAccepted:
        guard.caller(request.headers.get("authorization"))  # 401 for strangers when keyed
        if not sink.add_feedback(body.request_id, body.rating, body.correction):
            raise CaptureUnavailable("Feedback could not be queued; retry shortly.")
        return FeedbackAccepted(request_id=body.request_id)

    router.add_api_route(
        "/v1/feedback", give_feedback, methods=["POST"], summary="Rate or correct an answer"
    )
    return router

"""The operator API: read routes and start, promote, roll back, pause and resume rollouts.

Every endpoint needs `Authorization: Bearer KEY` with an admin key; keys are configured as
SHA-256 hex digests and compared in constant time. Errors are OpenAI-style (raised as
`TurnoutError`s; the app's handlers from `gateway.api.errors` render them).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.names import ADAPTER_REF_PATTERN
from gateway.config import describe_validation_error
from gateway.errors import (
    AdminKeyMissing,
    AdminKeyRejected,
    InvalidJSON,
    RequestValidationFailed,
    RolloutConflict,
    TurnoutError,
)
from gateway.protection.auth import AdminKeyring
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.model import (
    DEFAULT_SHADOW_MIN_PAIRS,
    DEFAULT_SHADOW_PERCENT,
    DEFAULT_STEPS,
    Rollout,
    validate_steps,
)


class StartRollout(BaseModel):
    """`POST /admin/routes/{route}/canary`: a canary (steps), an A/B split (one weight), or a
    shadow (`shadow_percent` of requests copied to the candidate; `steps` for its canary)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="`v2`, or a full adapter ref `name@v2`")
    mode: Literal["canary", "ab", "shadow"] = "canary"
    shadow_percent: float = Field(default=DEFAULT_SHADOW_PERCENT, gt=0, le=100)
    shadow_min_pairs: int = Field(default=DEFAULT_SHADOW_MIN_PAIRS, ge=1)
    auto_promote: bool | None = None
    weight: float | None = Field(default=None, gt=0, le=100)
    steps: list[float] | None = None
    min_requests_per_step: int | None = Field(default=None, ge=1)
    min_seconds_per_step: float | None = Field(default=None, ge=0)
    reason: str = ""

    @model_validator(mode="after")
    def _weight_or_steps(self) -> StartRollout:
        if self.weight is not None and self.steps is not None:
            raise ValueError("give `weight` or `steps`, not both")
        if self.mode == "ab" and self.weight is None:
            raise ValueError("an A/B split needs `weight`")
        if self.mode == "shadow" and self.weight is not None:
            raise ValueError("a shadow serves nothing: give `shadow_percent`, not `weight`")
        try:
            validate_steps(self.steps_tuple())
        except RolloutConflict as error:
            raise ValueError(error.message) from None
        return self

    def steps_tuple(self) -> tuple[float, ...]:
        if self.weight is not None:
            return (self.weight,)
        return tuple(self.steps) if self.steps is not None else DEFAULT_STEPS


class Reason(BaseModel):
    """Body of promote, rollback, pause and resume (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = ""


def rollout_view(controller: RolloutController, rollout: Rollout) -> dict[str, Any]:
    """A route's state as the API shows it, with the latest analysis verdict if any."""
    view = asdict(rollout)
    verdict = controller.latest_verdict(rollout.route)
    view["analysis"] = (
        None
        if verdict is None
        else {"action": verdict.action, "reason": verdict.reason, "numbers": dict(verdict.numbers)}
    )
    return view


Body = TypeVar("Body", bound=BaseModel)


async def _body(request: Request, model: type[Body]) -> Body:
    raw = await request.body()
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidJSON("The body is not valid JSON.") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationFailed(describe_validation_error(error)) from None


def _candidate_ref(rollout: Rollout, version: str) -> str:
    ref = version
    if "@" not in version:
        if rollout.stable is None:
            raise RequestValidationFailed(
                f"Route `{rollout.route}` serves the base model: give `version` as `name@version`.",
                param="version",
            )
        ref = f"{rollout.stable.partition('@')[0]}@{version}"
    if not re.fullmatch(ADAPTER_REF_PATTERN, ref):
        raise RequestValidationFailed(f"`{version}` is not a valid version.", param="version")
    return ref


def require_admin(admins: AdminKeyring | None) -> Callable[[Request], None]:
    """The dependency that guards every `/admin` route (none configured: every call refused)."""

    def admin(request: Request) -> None:
        """Refuse non-admin callers; name the caller for the audit log."""
        authorization = request.headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AdminKeyMissing("Admin endpoints need `Authorization: Bearer KEY`.")
        if admins is None:
            raise AdminKeyRejected("No admin keys are configured (auth.admin_keys_file).")
        try:
            operator = admins.authenticate(authorization)
        except TurnoutError:
            raise AdminKeyRejected("This key may not use the admin API.") from None
        request.state.actor = f"admin:{operator.name}"

    return admin


def admin_router(
    controller: RolloutController,
    admins: AdminKeyring | None,
    before_start: Callable[[str, str], Awaitable[None]],
) -> APIRouter:
    """Routes under `/admin`, guarded by the operators' keys (none: every call is refused).

    `before_start(route, candidate)` runs before a rollout starts (the gateway loads the
    candidate's adapter onto the backends there) and may refuse it by raising.
    """

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin(admins))])

    async def list_routes() -> dict[str, Any]:
        return {
            "routes": [rollout_view(controller, r) for r in controller.rollouts.values()],
        }

    async def show_route(route: str) -> dict[str, Any]:
        return rollout_view(controller, controller.get(route))

    async def start_rollout(route: str, request: Request) -> dict[str, Any]:
        body = await _body(request, StartRollout)
        current = controller.get(route)
        steps = body.steps_tuple()
        candidate = _candidate_ref(current, body.version)
        await before_start(route, candidate)
        rollout = await controller.start_rollout(
            route,
            candidate,
            mode=body.mode,
            steps=steps,
            actor=request.state.actor,
            reason=body.reason,
            min_requests_per_step=body.min_requests_per_step or current.min_requests_per_step,
            min_seconds_per_step=(
                body.min_seconds_per_step
                if body.min_seconds_per_step is not None
                else current.min_seconds_per_step
            ),
            shadow_percent=body.shadow_percent,
            shadow_min_pairs=body.shadow_min_pairs,
            auto_promote=body.auto_promote,
        )
        return rollout_view(controller, rollout)

    def operation(
        name: Literal["promote", "rollback", "pause", "resume", "promote_to_canary"],
    ) -> Any:
        async def apply(route: str, request: Request) -> dict[str, Any]:
            body = await _body(request, Reason)
            change = getattr(controller, name)
            rollout = await change(route, actor=request.state.actor, reason=body.reason)
            return rollout_view(controller, rollout)

        apply.__name__ = name
        return apply

    router.add_api_route("/routes", list_routes, methods=["GET"], summary="Every route's state")
    router.add_api_route("/routes/{route}", show_route, methods=["GET"], summary="One route")
    router.add_api_route(
        "/routes/{route}/canary", start_rollout, methods=["POST"], summary="Start a rollout"
    )
    for name in ("promote", "rollback", "pause", "resume"):
        router.add_api_route(
            f"/routes/{{route}}/{name}", operation(name), methods=["POST"], summary=name.title()
        )
    router.add_api_route(
        "/routes/{route}/promote-to-canary",
        operation("promote_to_canary"),
        methods=["POST"],
        summary="A shadow's candidate starts serving as a canary",
    )
    return router

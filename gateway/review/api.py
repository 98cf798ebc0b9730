"""The review console's routes: the page and its files (no data in them), and the JSON API.

Under `/review`: `GET /review` (the page), `GET /review/static/{file}`; and, each needing a
reviewer or admin key, `GET /review/api/me`, `GET /review/api/next`,
`GET /review/api/items/{id}`, `POST /review/api/items/{id}/judgement`,
`POST /review/api/items/{id}/skip`, `GET /review/api/summary`. Access to the API is decided
by the route each request's `scope["path"]` matched (the router's own dependency), never by a
URL rebuilt from the Host header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Annotated, Any, Literal

import jsonschema
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway.config import describe_validation_error
from gateway.errors import InvalidJSON, NotFound, RequestValidationFailed
from gateway.review.access import ReviewAccess, Reviewer
from monitoring.metrics import REVIEW_JUDGEMENTS, REVIEW_QUEUE_DEPTH
from training.review.store import REASONS, ReviewItem, ReviewQueue

# Item ids are SQLite integers: larger ones are no item (and would overflow the driver).
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1)]
SchemaOf = Callable[[str], Mapping[str, Any] | None]
# Called with route, version, arm and "judged bad" on an item's first judgement.
OnFirstJudgement = Callable[[str, str, str, bool], object]
_STATIC: dict[str, str] = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# The page loads nothing from anywhere else, and nothing else may frame it.
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


class JudgementBody(BaseModel):
    """`POST /review/api/items/{id}/judgement`."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["good", "bad"]
    reason: str | None = Field(default=None, description="one of `reasons` (GET /review/api/me)")
    correction: str | None = Field(
        default=None, max_length=100_000, description="the answer it should have been"
    )


def _static(name: str) -> bytes:
    return (resources.files("gateway.review") / "static" / name).read_bytes()


def _parse(raw: bytes) -> JudgementBody:
    try:
        data = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InvalidJSON("The body is not valid JSON.") from None
    try:
        return JudgementBody.model_validate(data)
    except ValidationError as error:
        raise RequestValidationFailed(describe_validation_error(error)) from None


def check_correction(correction: str, schema: Mapping[str, Any] | None) -> None:
    """A corrected answer must meet the route's schema, as answers must (422 naming why)."""
    if schema is None:
        return
    try:
        value = json.loads(correction)
    except ValueError:
        raise RequestValidationFailed(
            "correction: this route's answers are JSON; the correction is not valid JSON.",
            param="correction",
        ) from None
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise RequestValidationFailed(
            f"correction: breaks the route's schema at {where}: {error.message}",
            param="correction",
        )


def console_router() -> APIRouter:
    """The page and its files: public (they hold no data; the API behind them checks keys)."""
    router = APIRouter(prefix="/review")

    async def page() -> Response:
        return Response(_static("index.html"), media_type="text/html", headers=_PAGE_HEADERS)

    async def static(name: str) -> Response:
        media_type = _STATIC.get(name)
        if media_type is None:
            raise NotFound(f"No file {name} in the review console.")
        return Response(_static(name), media_type=media_type, headers=_PAGE_HEADERS)

    router.add_api_route("", page, methods=["GET"], include_in_schema=False)
    router.add_api_route("/static/{name}", static, methods=["GET"], include_in_schema=False)
    return router


def review_api_router(
    queue: ReviewQueue,
    access: ReviewAccess,
    schema_of: SchemaOf,
    on_first_judgement: OnFirstJudgement | None = None,
) -> APIRouter:
    """The JSON API, every route behind a reviewer or admin key; `on_first_judgement` hears
    each item's first verdict (the canary analysis, when reviews are one of its signals)."""

    def reviewer(request: Request) -> Reviewer:
        who = access.authenticate(request.headers.get("authorization"))
        request.state.actor = who.label
        request.state.reviewer = who
        return who

    router = APIRouter(prefix="/review/api", dependencies=[Depends(reviewer)])

    async def found(item_id: int) -> ReviewItem:
        item = await asyncio.to_thread(queue.item, item_id)
        if item is None:
            raise NotFound(f"No review item {item_id}.", param="id")
        return item

    def view(item: ReviewItem | None) -> dict[str, Any]:
        if item is None:
            return {"object": "turnout.review_item", "item": None}
        body = item.as_dict()
        body["has_schema"] = schema_of(item.route) is not None
        return {"object": "turnout.review_item", "item": body}

    async def refresh_depth(item: ReviewItem) -> None:
        depths = await asyncio.to_thread(queue.depths)
        stratum = (item.route, item.version, item.arm)
        REVIEW_QUEUE_DEPTH.labels(*stratum).set(depths.get(stratum, 0))

    async def me(request: Request) -> dict[str, Any]:
        who: Reviewer = request.state.reviewer
        return {
            "object": "turnout.reviewer",
            "reviewer": who.label,
            "role": who.role,
            "reasons": list(REASONS),
        }

    async def next_item(
        route: Annotated[str | None, Query(max_length=128)] = None,
        exclude: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    ) -> dict[str, Any]:
        return view(await asyncio.to_thread(queue.next_item, route, exclude))

    async def show(item_id: ItemId) -> dict[str, Any]:
        return view(await found(item_id))

    async def judge(item_id: ItemId, request: Request) -> dict[str, Any]:
        who: Reviewer = request.state.reviewer
        body = _parse(await request.body())
        item = await found(item_id)
        if body.reason is not None and body.reason not in REASONS:
            raise RequestValidationFailed(
                f"reason: must be one of {', '.join(REASONS)}.", param="reason"
            )
        correction = body.correction if body.correction and body.correction.strip() else None
        if correction is not None:
            check_correction(correction, schema_of(item.route))
        await asyncio.to_thread(queue.judge, item, body.verdict, body.reason, correction, who.label)
        REVIEW_JUDGEMENTS.labels(item.route, item.version, item.arm, body.verdict).inc()
        if on_first_judgement is not None and item.judgement is None:
            on_first_judgement(item.route, item.version, item.arm, body.verdict == "bad")
        await refresh_depth(item)
        return view(await found(item_id))

    async def skip(item_id: ItemId) -> dict[str, Any]:
        item = await found(item_id)
        await asyncio.to_thread(queue.skip, item)
        REVIEW_JUDGEMENTS.labels(item.route, item.version, item.arm, "skipped").inc()
        return view(await found(item_id))

    async def summary(
        route: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(queue.summary, route)
        return {"object": "list", "data": [row.as_dict() for row in rows]}

    router.add_api_route("/me", me, methods=["GET"], summary="Who is reviewing")
    router.add_api_route("/next", next_item, methods=["GET"], summary="The next item to review")
    router.add_api_route("/items/{item_id}", show, methods=["GET"], summary="One review item")
    router.add_api_route(
        "/items/{item_id}/judgement", judge, methods=["POST"], summary="Judge an item"
    )
    router.add_api_route("/items/{item_id}/skip", skip, methods=["POST"], summary="Skip an item")
    router.add_api_route(
        "/summary", summary, methods=["GET"], summary="Judgements per route, version and arm"
    )
    return router

"""An in-memory `UpstreamClient` for in-process data-plane tests: it answers chat requests by
the served model's name, and can hold a model's answers until the test releases them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson

from gateway.backends import UpstreamReply, UpstreamStream

Answerer = Callable[[dict[str, Any]], str]


def chat_reply(model: str, text: str, finish_reason: str = "stop") -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-memory",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(text.split())},
        }
    )


class MemoryUpstream:
    """Answers `POST` by model name with `answers[model](fields)`; `hold(model)` makes that
    model's answers wait until `release(model)`."""

    def __init__(self, answers: dict[str, Answerer]) -> None:
        self.answers = answers
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.cancelled: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    def hold(self, model: str) -> None:
        self._gates[model] = asyncio.Event()

    def release(self, model: str) -> None:
        self._gates.pop(model).set()

    async def post(self, backend: str, path: str, body: bytes, request_id: str) -> UpstreamReply:
        fields = orjson.loads(body)
        model = fields["model"]
        self.received.append((model, fields))
        await asyncio.sleep(0)  # as a socket would, let other tasks run while the answer comes
        gate = self._gates.get(model)
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(model)
                raise
        return UpstreamReply(
            200, "application/json", chat_reply(model, self.answers[model](fields))
        )

    def stream(
        self, backend: str, path: str, body: bytes, request_id: str
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        raise NotImplementedError("the memory upstream answers whole requests only")

    async def get(self, backend: str, path: str, timeout_s: float) -> UpstreamReply:
        return UpstreamReply(200, "application/json", b"{}")

    async def probe(self, backend: str, path: str, timeout_s: float) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

"""The stream relay as an ASGI app: what it sends, and how it ends when the client leaves.

In-process: the relay is driven with ASGI `receive`/`send` callables and an event source of
its own (the paths through real sockets and the real server are in test_bad_input_and_faults.py
and test_slow_client.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from starlette.types import Message

from gateway.api.departure import DEPARTURE_EXTENSION, DepartureNotice
from gateway.api.relay import StreamRelay
from gateway.api.stream_guard import FLOW_EXTENSION, ClientStalled, StallGuard
from gateway.outcomes.recorder import StreamTranscript
from gateway.upstream.proxy import OpenStream

EVENT = b'data: {"model":"route","choices":[{"index":0,"delta":{"content":"hi "}}]}\n\n'


class Flow:
    write_paused = False


def _relay(events: AsyncIterator[bytes], closed: list[str]) -> StreamRelay:
    resources = AsyncExitStack()
    resources.callback(closed.append, "upstream")
    return StreamRelay(
        OpenStream("text/event-stream", events, resources),
        {"x-turnout-route": "route"},
        StreamTranscript(),
        on_first_chunk=lambda: None,
        on_close=lambda: closed.append("outcome"),
    )


def test_a_whole_stream_goes_out_head_first_then_each_event_then_the_end() -> None:
    async def source() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0)
            yield EVENT

    async def scenario() -> list[Message]:
        sent: list[Message] = []
        finished = asyncio.Event()

        async def send(message: Message) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished.set()

        async def receive() -> Message:
            await finished.wait()  # what uvicorn says once the response is complete
            return {"type": "http.disconnect"}

        closed: list[str] = []
        scope: dict[str, Any] = {"type": "http", "extensions": {FLOW_EXTENSION: Flow()}}
        await _relay(source(), closed)(scope, receive, send)
        assert closed == ["upstream", "outcome"]
        return sent

    sent = asyncio.run(scenario())
    head = sent[0]
    assert head["type"] == "http.response.start"
    assert head["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in head["headers"]
    assert (b"x-turnout-route", b"route") in head["headers"]
    assert [m["body"] for m in sent[1:]] == [EVENT, EVENT, EVENT, b""]
    assert [m["more_body"] for m in sent[1:]] == [True, True, True, False]


def test_a_departure_ends_the_relay_soon_even_from_a_source_that_never_waits() -> None:
    relayed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal relayed
        while relayed < 10_000:  # never awaits: only the relay's own yields let the loop run
            relayed += 1
            yield EVENT

    async def scenario() -> list[str]:
        left = asyncio.Event()

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and relayed == 100:
                left.set()  # the client goes away after the 100th event

        async def receive() -> Message:
            await left.wait()
            return {"type": "http.disconnect"}

        closed: list[str] = []
        scope: dict[str, Any] = {"type": "http", "extensions": {FLOW_EXTENSION: Flow()}}
        await asyncio.wait_for(_relay(endless(), closed)(scope, receive, send), 5)
        return closed

    # It returns (no CancelledError escapes), closes the upstream and records the outcome.
    assert asyncio.run(scenario()) == ["upstream", "outcome"]
    assert 100 <= relayed <= 100 + 16


def test_a_departure_told_by_the_server_ends_the_relay_without_waiting_on_receive() -> None:
    # The gateway's own server tells the request's DepartureNotice when the connection is
    # lost; the relay then needs no task waiting on `receive` (and never calls it).
    relayed = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal relayed
        while relayed < 10_000:
            await asyncio.sleep(0)
            relayed += 1
            yield EVENT

    async def scenario() -> tuple[list[str], int]:
        notice = DepartureNotice()
        tasks_before = len(asyncio.all_tasks())
        tasks_during: list[int] = []

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and relayed == 50:
                tasks_during.append(len(asyncio.all_tasks()))
                notice.departed()  # what the protocol's connection_lost does

        async def receive() -> Message:
            raise AssertionError("the relay waits on receive although the server tells it")

        closed: list[str] = []
        extensions = {FLOW_EXTENSION: Flow(), DEPARTURE_EXTENSION: notice}
        scope: dict[str, Any] = {"type": "http", "extensions": extensions}
        await asyncio.wait_for(_relay(endless(), closed)(scope, receive, send), 5)
        notice.departed()  # a word after the relay ended reaches nobody
        assert tasks_during == [tasks_before + 1]  # the task wait_for runs it in; no watcher
        return closed, relayed

    closed, relayed_events = asyncio.run(scenario())
    assert closed == ["upstream", "outcome"]
    assert 50 <= relayed_events <= 51


def test_a_response_completed_is_no_departure() -> None:
    async def three() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield EVENT

    async def scenario() -> list[str]:
        notice = DepartureNotice()
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            raise AssertionError("not called")

        closed: list[str] = []
        extensions = {FLOW_EXTENSION: Flow(), DEPARTURE_EXTENSION: notice}
        scope: dict[str, Any] = {"type": "http", "extensions": extensions}
        await _relay(three(), closed)(scope, receive, send)
        assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
        return closed

    assert asyncio.run(scenario()) == ["upstream", "outcome"]


def test_a_write_is_timed_only_while_the_flow_is_paused() -> None:
    message: Message = {"type": "http.response.body", "body": EVENT, "more_body": True}

    async def slow_send(message: Message) -> None:
        await asyncio.sleep(0.15)  # three times the stall limit

    async def scenario() -> None:
        flow = Flow()
        guard = StallGuard(slow_send, 0.05, flow)
        await guard(message)  # not paused: it cannot block for good, so it is not timed
        flow.write_paused = True
        with pytest.raises(ClientStalled):
            await guard(message)

    asyncio.run(scenario())

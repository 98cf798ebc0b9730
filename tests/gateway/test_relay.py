"""The stream relay as an ASGI app: what it sends, and how it ends when the client leaves.

In-process: the relay is driven with ASGI `receive`/`send` callables and an event source of
its own (the paths through real sockets and the real server are in test_bad_input_and_faults.py
and test_slow_client.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from starlette.types import Message

from gateway.api.client_wire import WIRE_EXTENSION
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


class PushedSource:
    """A `PushedEvents` handing `count` events to the sink, one per loop step, as the
    upstream connection's callback would; records hold and release."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.held = False
        self.calls: list[str] = []

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        while self.left:
            await asyncio.sleep(0)
            self.left -= 1
            sink(EVENT)
            if self.held:
                return False
        return True

    def hold(self) -> None:
        self.held = True
        self.calls.append("hold")

    def release(self) -> None:
        self.held = False
        self.calls.append("release")


class Wire:
    """A `ClientWire` whose writes could block after `open_for` of them (flow paused)."""

    def __init__(self, open_for: int) -> None:
        self.open_for = open_for
        self.written: list[bytes] = []

    def open(self) -> bool:
        return True

    def write(self, body: bytes) -> bool:
        if len(self.written) >= self.open_for:
            return False
        self.written.append(body)
        return True


async def _never(*_: Any) -> AsyncIterator[bytes]:
    raise AssertionError("a pushed stream is not pulled")
    yield b""


def _pushed_relay(
    source: PushedSource, closed: list[str], transcript: StreamTranscript
) -> StreamRelay:
    resources = AsyncExitStack()
    resources.callback(closed.append, "upstream")
    return StreamRelay(
        OpenStream("text/event-stream", _never(), resources, source),
        {},
        transcript,
        on_first_chunk=lambda: closed.append("first"),
        on_close=lambda: closed.append("outcome"),
    )


def test_a_pushed_stream_goes_on_the_wire_and_what_could_block_through_send_held() -> None:
    async def scenario() -> None:
        source, wire, transcript = PushedSource(5), Wire(open_for=2), StreamTranscript()
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)
            if message.get("body"):
                wire.open_for += 10  # the client drained: writes go on the wire again

        async def receive() -> Message:
            raise AssertionError("not called")

        closed: list[str] = []
        extensions = {FLOW_EXTENSION: Flow(), DEPARTURE_EXTENSION: DepartureNotice()}
        scope: dict[str, Any] = {"type": "http", "extensions": {**extensions, WIRE_EXTENSION: wire}}
        await _pushed_relay(source, closed, transcript)(scope, receive, send)
        # Two written straight, the third could block: the source is held, the third goes
        # through send (which waits for the client), the source is released, two more written.
        assert wire.written == [EVENT] * 4
        assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 2
        assert sent[1] == {"type": "http.response.body", "body": EVENT, "more_body": True}
        assert sent[2] == {"type": "http.response.body", "body": b"", "more_body": False}
        assert source.calls == ["hold", "release"]
        assert transcript.answer().text == "hi " * 5
        assert closed == ["first", "upstream", "outcome"]

    asyncio.run(scenario())


def test_a_departure_ends_a_pushed_relay_at_once() -> None:
    async def scenario() -> None:
        source, wire, notice = PushedSource(10_000), Wire(open_for=10_000), DepartureNotice()

        async def send(message: Message) -> None:
            pass

        async def receive() -> Message:
            raise AssertionError("not called")

        def depart_at_50(body: bytes) -> bool:
            if len(wire.written) == 50:
                notice.departed()
            return Wire.write(wire, body)

        wire.write = depart_at_50  # type: ignore[method-assign]
        closed: list[str] = []
        extensions = {FLOW_EXTENSION: Flow(), DEPARTURE_EXTENSION: notice, WIRE_EXTENSION: wire}
        scope: dict[str, Any] = {"type": "http", "extensions": extensions}
        await asyncio.wait_for(
            _pushed_relay(source, closed, StreamTranscript())(scope, receive, send), 5
        )
        assert 51 <= len(wire.written) <= 52
        assert closed == ["first", "upstream", "outcome"]

    asyncio.run(scenario())

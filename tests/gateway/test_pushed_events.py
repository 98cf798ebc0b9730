"""A stream's events pushed from the upstream: cut into whole SSE events, the model renamed,
a failure ended with an error event (in-process, over a scripted upstream)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import BackendUnavailable
from gateway.routing.table import build_routing_table
from gateway.upstream.proxy import ModelNameRewrite, RewrittenPush
from monitoring import metrics

TARGET = (
    build_routing_table(
        parse_config({"base_model": "tiny", "routes": {"triage": {"stable": "triage@v1"}}})
    )
    .entry("triage")
    .stable
)
EVENTS = b"".join(
    b'data: {"model":"triage@v1","choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % n
    for n in range(6)
)


class Pieces:
    """An upstream body arriving in the given pieces, then failing with `error` if given."""

    def __init__(self, pieces: list[bytes], error: Exception | None = None) -> None:
        self.status = 200
        self.content_type = "text/event-stream"
        self._pieces = pieces
        self._error = error

    async def pushed(self, sink: Callable[[bytes], None]) -> bool:
        for piece in self._pieces:
            await asyncio.sleep(0)
            sink(piece)
        if self._error is not None:
            raise self._error
        return True

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def chunks(self) -> AsyncIterator[bytes]:
        raise AssertionError("not pulled")

    async def read(self) -> bytes:
        raise AssertionError("not read")


def _pushed(upstream: Pieces) -> list[bytes]:
    got: list[bytes] = []
    push = RewrittenPush(upstream, ModelNameRewrite.for_target(TARGET), "http://b")
    assert asyncio.run(push.pushed(got.append)) is True
    return got


@given(st.lists(st.integers(1, len(EVENTS) - 1), max_size=8, unique=True))
def test_pieces_cut_anywhere_become_whole_events_renamed(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(EVENTS)]
    got = _pushed(Pieces([EVENTS[a:b] for a, b in itertools.pairwise(bounds)]))
    assert all(block.endswith(b"\n\n") for block in got)
    assert b"".join(got) == EVENTS.replace(b'"triage@v1"', b'"triage"')


def test_a_failure_mid_stream_ends_it_with_an_error_event_and_is_counted() -> None:
    counted = metrics.UPSTREAM_ERRORS.labels("http://b", "backend_unavailable")
    before = counted._value.get()
    got = _pushed(Pieces([EVENTS[:50]], BackendUnavailable("The backend went away.")))
    assert len(got) == 1  # the unfinished event is dropped; the error event ends the stream
    error = orjson.loads(got[0].removeprefix(b"data: "))
    assert error["error"]["code"] == "backend_unavailable"
    assert counted._value.get() == before + 1

"""`StreamTranscript`: what it keeps of a stream equals what the plain split-and-parse reading
keeps, for any way the events are cut into chunks (its single-event path is a shortcut only)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outcomes.recorder import Answer, StreamTranscript
from tests.support.memory import built_and_held


def reference_answer(chunks: list[bytes]) -> Answer:
    """The transcript as it was written before the single-event path (commit 9ae16c2)."""
    parts: list[str] = []
    finish_reason: str | None = None
    prompt_tokens = completion_tokens = 0
    for chunk in chunks:
        for event in chunk.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                continue
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                continue
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or prompt_tokens)
            completion_tokens = int(usage.get("completion_tokens") or completion_tokens)
            for choice in data.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str):
                    parts.append(text)
                finish_reason = choice.get("finish_reason") or finish_reason
    return Answer("".join(parts), finish_reason, prompt_tokens, completion_tokens)


texts = st.text(max_size=12)  # any characters: quotes, backslashes, control characters, emoji
choice = st.fixed_dictionaries(
    {"index": st.sampled_from([0, 0, 0, 1])},
    optional={
        "delta": st.one_of(
            st.fixed_dictionaries({}, optional={"content": st.one_of(texts, st.none())}),
            st.none(),
        ),
        "text": st.one_of(texts, st.none()),
        "finish_reason": st.sampled_from([None, "stop", "length", ""]),
    },
)
usage = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": st.one_of(st.integers(0, 10_000), st.none()),
            "completion_tokens": st.one_of(st.integers(0, 10_000), st.none()),
        },
    ),
)
document = st.fixed_dictionaries(
    {"model": st.just("route")},
    optional={"choices": st.one_of(st.lists(choice, max_size=3), st.none()), "usage": usage},
)


@st.composite
def event(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "json", "done", "comment", "broken"]))
    if kind == "done":
        return b"data: [DONE]\n\n"
    if kind == "comment":
        return b": keep-alive\n\n"
    body: dict[str, Any] = draw(document)
    payload = orjson.dumps(body)
    if kind == "broken":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    return b"data: " + payload + draw(st.sampled_from([b"\n\n", b"\r\n\n"]))


@st.composite
def cut_stream(draw: st.DrawFn) -> list[bytes]:
    """Events joined, then cut at arbitrary places (the relay gets whole events, but a
    transcript must not depend on it)."""
    whole = b"".join(draw(st.lists(event(), max_size=8)))
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=4)))
    bounds = [0, *cuts, len(whole)]
    return [whole[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def whole_events(draw: st.DrawFn) -> list[bytes]:
    """One or several whole events per chunk, as the relay feeds them."""
    events = draw(st.lists(event(), max_size=8))
    chunks: list[bytes] = []
    while events:
        take = draw(st.integers(1, len(events)))
        chunks.append(b"".join(events[:take]))
        events = events[take:]
    return chunks


def transcript_of(chunks: list[bytes]) -> Answer:
    transcript = StreamTranscript()
    for chunk in chunks:
        transcript.feed(chunk)
    return transcript.answer()


@settings(max_examples=120, deadline=None)
@given(whole_events())
def test_a_transcript_of_whole_events_equals_the_plain_reading(chunks: list[bytes]) -> None:
    assert transcript_of(chunks) == reference_answer(chunks)


@settings(max_examples=120, deadline=None)
@given(cut_stream())
def test_a_transcript_of_events_cut_anywhere_equals_the_plain_reading(chunks: list[bytes]) -> None:
    assert transcript_of(chunks) == reference_answer(chunks)


def test_a_vllm_stream_gives_its_text_finish_reason_and_usage() -> None:
    events = [
        b'data: {"model":"r","choices":[{"index":0,"delta":{"content":"say \\"hi\\"\\n"}}]}\n\n',
        b'data: {"model":"r","choices":[{"index":1,"delta":{"content":"other"}}]}\n\n',
        b'data: {"model":"r","choices":[{"index":0,"delta":{"content":"\\u00e9"},'
        b'"finish_reason":"stop"}]}\n\n',
        b'data: {"model":"r","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n",
    ]
    assert transcript_of(events) == Answer('say "hi"\n\u00e9', "stop", 7, 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(event(), min_size=30, max_size=120))
def test_a_long_transcript_equals_the_plain_reading(events: list[bytes]) -> None:
    """Past `_PARTS_PER_BLOCK` parts the text is joined as it goes; the answer is the same."""
    assert transcript_of(events) == reference_answer(events)


def test_an_open_transcript_holds_about_its_text_not_an_object_per_token() -> None:
    """2,000 one-token events: kept apart the parts took about 60 bytes a token (over 100 KB
    here); joined as they come, the transcript holds about the text's own 16 KB."""
    events = [
        b'data: {"model":"r","choices":[{"index":0,"delta":{"content":"tok%04d "}}]}\n\n' % i
        for i in range(2000)
    ]

    def fed() -> StreamTranscript:
        transcript = StreamTranscript()
        for chunk in events:
            transcript.feed(chunk)
        return transcript

    transcript, held = built_and_held(fed)
    text = transcript.answer().text
    assert text is not None
    assert len(text) == 16_000
    assert held < 2 * len(text)

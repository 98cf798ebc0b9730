"""The headers an inference request is judged by, and its body read from ASGI's `receive`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message

from gateway.api.request_head import RequestHead, read_body
from gateway.errors import BodyTooLarge


def test_each_header_is_the_first_of_its_name_and_the_rest_are_ignored() -> None:
    scope: dict[str, Any] = {
        "headers": [
            (b"host", b"gateway"),
            (b"authorization", b"Bearer first"),
            (b"x-turnout-key", b"user-\xe9"),  # latin-1, as starlette reads it
            (b"authorization", b"Bearer second"),
            (b"content-length", b"42"),
            (b"x-request-id", b"abc-1"),
            (b"x-turnout-arm", b"candidate"),
        ]
    }
    head = RequestHead.of(scope)
    assert head == RequestHead(
        authorization="Bearer first",
        content_length="42",
        arm="candidate",
        request_id="abc-1",
        sticky_key="user-é",
    )
    assert RequestHead.of({"headers": []}) == RequestHead()


def _receive(messages: list[Message]) -> Any:
    async def receive() -> Message:
        return messages.pop(0)

    return receive


def test_a_body_in_chunks_is_joined_and_an_empty_one_is_empty() -> None:
    chunks: list[Message] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]
    assert asyncio.run(read_body(_receive(chunks), None, 10)) == b"abcd"
    empty: list[Message] = [{"type": "http.request"}]
    assert asyncio.run(read_body(_receive(empty), "0", 10)) == b""


def test_a_body_over_the_limit_is_refused_declared_or_as_it_arrives() -> None:
    never: list[Message] = []  # a declared length over the limit: nothing is read
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(_receive(never), "11", 10))
    chunks: list[Message] = [
        {"type": "http.request", "body": b"123456", "more_body": True},
        {"type": "http.request", "body": b"123456", "more_body": True},
    ]
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(_receive(chunks), None, 10))
    assert chunks == []  # refused at the second chunk, before any more was asked for


def test_a_client_that_leaves_while_sending_is_a_disconnect() -> None:
    left: list[Message] = [
        {"type": "http.request", "body": b"12", "more_body": True},
        {"type": "http.disconnect"},
    ]
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(_receive(left), None, 10))

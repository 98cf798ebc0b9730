"""The request body the proxy sends to vLLM: the client's fields with vLLM's model name, held
at its own size for as long as a stream is open."""

from __future__ import annotations

import orjson

from gateway.routing.table import Target
from gateway.upstream.proxy import upstream_body
from tests.support.memory import built_and_held


def test_the_upstream_body_holds_its_own_size_while_a_stream_is_open() -> None:
    """orjson's result keeps its 4 KiB write buffer; a stream holds its body to the end, so
    the body is copied to its size (before: 4,089 bytes held for a 100-byte body)."""
    target = Target("support", None, "support@v1")
    fields = {"model": "support", "messages": [{"role": "user", "content": "hi"}]}
    body, held = built_and_held(lambda: upstream_body(fields, target))
    assert orjson.loads(body)["model"] == "support@v1"
    assert held < len(body) + 128

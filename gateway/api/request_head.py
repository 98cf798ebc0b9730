"""What the inference endpoints read of a request before its body: the few headers they use,
found in one pass over the ASGI scope's header list, and the body read straight from `receive`.

starlette's `Request` builds a header mapping and decodes every header for each lookup (six a
request here), and reads the body through an async generator the event loop registers and
forgets per request. Without it a whole answer cost the gateway 121 - 126 µs of CPU instead of
135 - 142 (docs/performance.md, "The request path, cut").
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from gateway.errors import BodyTooLarge

_WANTED = {
    b"authorization": "authorization",
    b"content-length": "content_length",
    b"x-turnout-arm": "arm",  # an admin forces the arm (tests, debugging)
    b"x-request-id": "request_id",
    b"x-turnout-key": "sticky_key",
}


@dataclass(slots=True)
class RequestHead:
    """The headers an inference request is judged by; each the first of its name, if sent."""

    authorization: str | None = None
    content_length: str | None = None
    arm: str | None = None
    request_id: str | None = None
    sticky_key: str | None = None

    @classmethod
    def of(cls, scope: Scope) -> RequestHead:
        head = cls()
        wanted = _WANTED
        for name, value in scope["headers"]:
            attribute = wanted.get(name)
            if attribute is not None and getattr(head, attribute) is None:
                # ASGI servers give names lower-cased; values are latin-1, as starlette reads them.
                setattr(head, attribute, value.decode("latin-1"))
        return head


async def read_body(receive: Receive, declared_length: str | None, limit: int) -> bytes:
    """The whole body, refusing it (413) as soon as it is known to exceed `limit` bytes: at once
    when the declared `content-length` does, else as the chunks arrive."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

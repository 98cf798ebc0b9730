"""A loopback HTTP server standing in for a judging model behind the chat-completions API.

A model that follows the refusal rubric cannot run in this suite (the demo model's weights are
random), so this one answers by rule: REFUSAL (as " refusal.") when the graded text says "can't"
or "no puedo", something unparseable for a text with MARKER, ANSWER otherwise; a text with
FAIL gets a 500, and one with SLOW waits `slow_s` first. It records every request (path,
authorization header, JSON body, and how many requests were in flight when it arrived)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitoring.judge_stub import send_chat_reply


@contextmanager
def judge_server(slow_s: float = 0.0) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The server's base URL and the list of requests it received, while it runs."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()
    in_flight = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with lock:
                in_flight[0] += 1
                now = in_flight[0]
            try:
                self._answer(now)
            finally:
                with lock:
                    in_flight[0] -= 1

        def _answer(self, now: int) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            request = {"path": self.path, "auth": self.headers.get("authorization"), **body}
            seen.append({**request, "in_flight": now})
            graded = body["messages"][-1]["content"]
            if "SLOW" in graded:
                time.sleep(slow_s)
            status = 500 if "FAIL" in graded else 200
            if "MARKER" in graded:
                verdict = "Hmm, hard to say"
            elif "can't" in graded or "no puedo" in graded:
                verdict = " refusal."
            else:
                verdict = "ANSWER"
            send_chat_reply(self, verdict, status)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

"""A stand-in judging model for `turnout bench signals --judge`: what a judge's calls cost the
caller, not what a model costs.

An OpenAI-compatible `/v1/chat/completions` server, run as its own process (so its CPU is not
the caller's), that holds each request `--latency-ms` (a model's time to answer) and replies
`REFUSAL` when the graded text says "can't", `ANSWER` otherwise: a rule, not a reading, so the
bench measures cost and throughput only, never quality. It prints its port on the first line.

    python -m monitoring.judge_stub [--port 0] [--latency-ms 100]
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def send_chat_reply(handler: BaseHTTPRequestHandler, content: str, status: int = 200) -> None:
    """Answer a chat-completions request: `content` as the first choice's message."""
    reply = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(reply)))
    handler.end_headers()
    handler.wfile.write(reply)


def stub_server(port: int, latency_s: float) -> ThreadingHTTPServer:
    """The server, bound on loopback (port 0: any free one), not yet serving."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a model server would

        def setup(self) -> None:
            super().setup()
            # The head and the body leave in two writes: without this, Nagle's algorithm holds
            # the body for the client's delayed ACK (about 40 ms a call).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            time.sleep(latency_s)
            graded = body["messages"][-1]["content"]
            send_chat_reply(self, "REFUSAL" if "can't" in graded else "ANSWER")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.judge_stub")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    arguments = parser.parse_args(argv)
    server = stub_server(arguments.port, arguments.latency_ms / 1000)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

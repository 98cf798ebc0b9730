"""Backends as real TCP servers on loopback that misbehave on purpose (hang, stall, die)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.serving.embedded_vllm import free_port


@contextmanager
def tcp_backend(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A real TCP server on loopback: `answer(connection, stop)` runs on a thread of its own
    for every connection accepted; `stop` is set when the server shuts down."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except TimeoutError:
                continue
            accepted.append(connection)
            threading.Thread(target=answer, args=(connection, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


@contextmanager
def scripted_backend(reply: bytes = b"", then_close: bool = False) -> Iterator[str]:
    """A real TCP server that reads a request, sends `reply`, then hangs (or closes).

    With no reply it is a backend that accepts and never answers; with the head and first
    event of an SSE stream it is a backend that stalls or dies mid-stream.
    """

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        # Every request on the connection gets `reply` (health probes reuse connections).
        try:
            while connection.recv(65536):
                connection.sendall(reply)
                if then_close:
                    connection.close()
                    return
        except OSError:
            return

    with tcp_backend(answer) as url:
        yield url


def closed_port_url() -> str:
    """An origin where nothing listens: a backend that is down."""
    return f"http://127.0.0.1:{free_port()}"

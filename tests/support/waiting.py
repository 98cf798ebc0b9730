"""Polling with a deadline: the tests' only way to wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def answers(url: str) -> bool:
    """Whether `GET url` answers 200 within a second."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def listening_sockets(port: int) -> int:
    """How many sockets listen on `port` (IPv4 and IPv6): with SO_REUSEPORT, one per process
    that has called `listen()`. A socket only bound is not counted, and gets no connections."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count

"""Waiting for a local server that was just started to answer, or to die trying."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request

# Loopback only: a proxy from the environment must never sit between us and our own servers.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NotAnswering(RuntimeError):
    """The server exited, or did not answer 200 in time."""


def wait_until_answers(
    url: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    what: str = "the server",
) -> None:
    """Block until `GET url` answers 200; NotAnswering if `process` exits first or time runs
    out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NotAnswering(f"{what} exited with status {process.returncode}")
        # Refused while starting (URLError and HTTPError are OSErrors): try again shortly.
        with contextlib.suppress(OSError), _DIRECT.open(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    raise NotAnswering(f"{what} did not answer at {url} within {timeout_s:.0f} s")

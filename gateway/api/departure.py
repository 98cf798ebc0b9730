"""How a relay learns, without a task of its own, that its client has gone.

The gateway's HTTP protocol gives each request a `DepartureNotice` (scope extension
`turnout.departure`) and tells it when the connection is lost before the response completed.
A relay that watches the notice is cancelled from there, at once, as it would be by a task
waiting on ASGI's `receive` for `http.disconnect` would be (other servers still get that task),
but without a task created, stepped and cancelled for every stream (docs/performance.md, "The
request path, cut").
"""

from __future__ import annotations

from collections.abc import Callable

DEPARTURE_EXTENSION = "turnout.departure"


class DepartureNotice:
    """One request's word that its client left: calls the watcher once, if one is set."""

    __slots__ = ("_watcher",)

    def __init__(self) -> None:
        self._watcher: Callable[[], None] | None = None

    def watch(self, watcher: Callable[[], None]) -> None:
        self._watcher = watcher

    def unwatch(self) -> None:
        self._watcher = None

    def departed(self) -> None:
        """The connection was lost before the response completed."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher()

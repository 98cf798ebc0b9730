"""The live semantic-drift windows, fed off the request path by the signals worker.

The event loop only queues a prompt (`offer`, which never blocks and drops when the worker's
queue is full); the worker thread embeds it, and on that same thread `SemanticDriftFeed` adds
the embedding to its route and version's live window, takes the reference the first time it
sees that route and version (`reference_for`: the adapter's recorded window, or None: the first
window of traffic), and runs the permutation test and sets the gauges when a live window first
fills, then every `refresh_s` for the windows that moved (the permutation test holds back the
worker's queue, never the event loop). All
numpy work stays on the worker thread; this module imports numpy only when a feed is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from monitoring import metrics
from monitoring.refusal_worker import RefusalWorker

log = logging.getLogger("turnout.semantic_drift")

# (route, version) -> the recorded reference embeddings, or None to take the first window
ReferenceFor = Callable[[str, str], Any]


class SemanticDriftFeed:
    """Per (route, version) live windows of prompt embeddings, compared with their reference."""

    def __init__(
        self,
        worker: RefusalWorker,
        reference_for: ReferenceFor,
        window: int = 500,
        refresh_s: float = 60.0,
        permutations: int = 200,
        alpha: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from monitoring.semantic_drift import SemanticDriftMonitor

        self.monitor = SemanticDriftMonitor(window, permutations, alpha)
        self._worker = worker
        self._reference_for = reference_for
        self._refresh_s = refresh_s
        self._clock = clock
        self._refreshed = clock()
        self._seen: set[tuple[str, str]] = set()
        self._changed: set[tuple[str, str]] = set()  # windows that moved since their last test
        self._published: set[tuple[str, str]] = set()  # windows tested at least once

    def offer(self, route: str, version: str, prompt: str) -> bool:
        """Queues `prompt` for its route and version's window (event loop side; never blocks).
        False: the worker's queue was full and the prompt was dropped (counted)."""
        queued = self._worker.submit_prompt(
            prompt, lambda embedding: self._observe(route, version, embedding)
        )
        result = "queued" if queued else "dropped"
        metrics.SEMANTIC_DRIFT_PROMPTS.labels(route, version, result).inc()
        return queued

    def _observe(self, route: str, version: str, embedding: Any) -> None:  # worker thread
        key = (route, version)
        if key not in self._seen:
            self._seen.add(key)
            try:
                reference = self._reference_for(route, version)
            except Exception:  # no recorded reference: the first window serves
                log.exception("reading the drift reference of %s %s failed", route, version)
                reference = None
            if reference is not None and len(reference) >= 2:
                self.monitor.set_reference(route, version, reference)
                log.info("semantic drift of %s %s: recorded reference", route, version)
        self.monitor.observe(route, version, embedding)
        self._changed.add(key)
        if key not in self._published and self.monitor.full(route, version):
            # the first full window is tested at once; later ones every `refresh_s`
            self._published.add(key)
            self.monitor.refresh_gauges([key])
            self._changed.discard(key)
        if self._changed and self._clock() - self._refreshed >= self._refresh_s:
            self._refreshed = self._clock()
            changed, self._changed = self._changed, set()
            self.monitor.refresh_gauges(changed)
        # counted last: once a prompt shows as embedded, any test its window triggered is out
        metrics.SEMANTIC_DRIFT_PROMPTS.labels(route, version, "embedded").inc()

"""Which adapter versions each backend holds: what the data plane picks backends by."""

from __future__ import annotations

from collections.abc import Iterable

from monitoring import metrics


class Residency:
    """Adapter versions (vLLM names) per backend as last seen; None while a backend is unknown.

    Unknown means it has not been listed yet or could not be reached: requests may still try
    it (and get a clear 502 if it is down), while a backend known to lack an adapter never gets
    that adapter's requests.
    """

    def __init__(self, backends: Iterable[str]) -> None:
        self._held: dict[str, frozenset[str] | None] = {backend: None for backend in backends}

    def holds(self, backend: str, served_name: str) -> bool:
        held = self._held.get(backend)
        return held is not None and served_name in held

    def unknown(self, backend: str) -> bool:
        return self._held.get(backend) is None

    def held(self, backend: str) -> frozenset[str]:
        return self._held.get(backend) or frozenset()

    def set(self, backend: str, served_names: frozenset[str]) -> None:
        self._held[backend] = served_names
        metrics.ADAPTERS_RESIDENT.labels(backend).set(len(served_names))

    def lose_track(self, backend: str) -> None:
        """The backend cannot be reached: what it holds is unknown until it is listed again."""
        self._held[backend] = None
        metrics.ADAPTERS_RESIDENT.labels(backend).set(0)

    def forget(self, backend: str, served_name: str) -> None:
        """The backend said it does not know this adapter (it restarted): stop sending it there."""
        self.set(backend, self.held(backend) - {served_name})

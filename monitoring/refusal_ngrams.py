"""The cascade's cheap stage: a logistic model on character n-grams of the answer's opening.

Scoring is pure Python (a dict lookup per n-gram, about 0.1 ms for a 400-character opening):
no numpy, no encoder. The model says how sure it is with two thresholds chosen on the training
sets by cross-validation: below `low` the answer is clearly not a refusal, above `high` it
clearly is, and in between it is uncertain (the cascade asks the encoder). Trained by
`python -m monitoring.refusal_cascade train` (numpy, the signals extra) and shipped as
`monitoring/data/refusal_ngrams.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.refusals import REFUSAL_WINDOW_CHARS

NGRAMS_PATH = Path(__file__).resolve().parent / "data" / "refusal_ngrams.json"
NGRAM_SIZES = (2, 3, 4)


def ngrams(text: str) -> set[str]:
    """The distinct character 2-, 3- and 4-grams of the casefolded opening, whitespace
    collapsed and padded with a space at each end (so word starts and ends are features)."""
    padded = f" {' '.join(text[:REFUSAL_WINDOW_CHARS].casefold().split())} "
    return {padded[i : i + n] for n in NGRAM_SIZES for i in range(len(padded) - n + 1)}


@dataclass(frozen=True)
class NgramModel:
    """P(refusal) = sigmoid(bias + sum of the opening's n-gram weights / sqrt(n-gram count)).

    `low` and `high` bound the uncertain band: `decide` answers None inside it."""

    weights: dict[str, float]
    bias: float
    low: float
    high: float
    version: str

    def score(self, text: str) -> float:
        grams = ngrams(text)
        if not grams:
            return 1.0 / (1.0 + math.exp(-self.bias))
        total = sum(self.weights.get(gram, 0.0) for gram in grams)
        logit = self.bias + total / math.sqrt(len(grams))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit))))

    def decide(self, score: float) -> bool | None:
        """True: clearly a refusal; False: clearly not; None: uncertain."""
        if score < self.low:
            return False
        if score > self.high:
            return True
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "bias": self.bias,
            "low": self.low,
            "high": self.high,
            "weights": self.weights,
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path = NGRAMS_PATH) -> NgramModel:
        """Read a saved model; its version is the file's digest (any retrain changes it)."""
        data = path.read_bytes()
        saved = json.loads(data)
        return cls(
            weights={str(k): float(v) for k, v in saved["weights"].items()},
            bias=float(saved["bias"]),
            low=float(saved["low"]),
            high=float(saved["high"]),
            version=f"ngrams-{hashlib.sha256(data).hexdigest()[:8]}",
        )

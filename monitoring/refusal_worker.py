"""Score answers for refusal off the request path: named scorers and a bounded worker thread.

A scorer turns a batch of answers into refusal scores in [0, 1] and a verdict. The phrase
rules score 0 or 1 and cost microseconds; the learned detector embeds each answer (milliseconds
of numpy and C, which releases the GIL), so it runs on a worker thread fed by a bounded queue:
the event loop only enqueues, and when the worker falls behind, answers are dropped (counted)
rather than queued without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from monitoring.refusals import PhraseRefusalDetector

log = logging.getLogger("turnout.refusals")

JUDGE_DETECTORS = ("judge", "cascade-judge")  # they ask a judge route: `judged_scorer`
DETECTORS = ("phrase", "learned", "cascade", *JUDGE_DETECTORS)


@dataclass(frozen=True, slots=True)
class RefusalScore:
    """One answer's verdict and the score it came from."""

    refusal: bool
    score: float


class RefusalScorer(Protocol):
    """Scores a batch of answers, in order."""

    name: str

    def score_batch(self, texts: Sequence[str]) -> list[RefusalScore]: ...


class PhraseScorer:
    """The phrase rules as a scorer: score 1.0 for a refusal, 0.0 otherwise."""

    def __init__(self) -> None:
        self._detector = PhraseRefusalDetector()
        self.name = self._detector.name

    def score_batch(self, texts: Sequence[str]) -> list[RefusalScore]:
        verdicts = (self._detector.is_refusal(text) for text in texts)
        return [RefusalScore(v, 1.0 if v else 0.0) for v in verdicts]


class LearnedScorer:
    """The learned detector (encoder plus trained head) as a scorer; `embed` shares an encoder
    already loaded (the semantic-drift feed's)."""

    def __init__(self, embed: Callable[[Sequence[str]], Any] | None = None) -> None:
        from monitoring.learned_refusals import LearnedRefusalDetector

        self._detector = LearnedRefusalDetector(embed)
        self.name = self._detector.name
        self._threshold = self._detector.head.threshold

    def score_batch(self, texts: Sequence[str]) -> list[RefusalScore]:
        scores = self._detector.scores(texts)
        return [RefusalScore(s >= self._threshold, s) for s in scores]


class CascadeScorer:
    """The cascade (`monitoring/refusal_cascade.py`) as a scorer: the n-gram and static stages
    decide the clear answers, the encoder's first layers and their head the uncertain ones.
    That shallow encoder is the cascade's own (loaded when the first uncertain answer comes):
    the semantic-drift feed's full-depth encoder gives other embeddings, so it is not shared.
    With `judge` (the `cascade-judge` detector), the uncertain answers are that scorer's to
    decide, and no encoder is loaded."""

    def __init__(self, judge: RefusalScorer | None = None) -> None:
        from monitoring.refusal_cascade import CascadeDetector

        self.detector = CascadeDetector(judge=judge)
        self.name = self.detector.name

    def score_batch(self, texts: Sequence[str]) -> list[RefusalScore]:
        return [RefusalScore(d.refusal, d.score) for d in self.detector.decide_batch(texts)]


def scorer_named(name: str) -> RefusalScorer:
    """The scorer for a detector name (`phrase`, `learned` or `cascade`; `judge` and
    `cascade-judge` need a judge's settings: build `monitoring.refusal_judge.JudgeScorer`)."""
    if name == "phrase":
        return PhraseScorer()
    if name == "learned":
        return LearnedScorer()
    if name == "cascade":
        return CascadeScorer()
    if name in JUDGE_DETECTORS:
        raise ValueError(f"the {name} detector needs a route to ask: use judged_scorer")
    raise ValueError(f"unknown refusal detector {name!r}: choose one of {', '.join(DETECTORS)}")


def judged_scorer(name: str, judge: RefusalScorer) -> RefusalScorer:
    """The scorer for a detector of `JUDGE_DETECTORS` around its judge (a
    `monitoring.refusal_judge.JudgeScorer`): the judge itself, or the cascade's cheap stages
    in front of it."""
    if name == "judge":
        return judge
    if name == "cascade-judge":
        return CascadeScorer(judge=judge)
    raise ValueError(f"{name!r} asks no judge: choose one of {', '.join(JUDGE_DETECTORS)}")


OnScore = Callable[[RefusalScore], None]
OnEmbedding = Callable[[Any], None]  # one prompt's embedding (a numpy row)
EmbedPrompts = Callable[[Sequence[str]], Any]  # texts -> a numpy array, one row each


_Job = tuple[str, OnScore, bool]  # text, callback, whether it is a prompt to embed


class RefusalWorker:
    """A thread that scores queued answers in batches and hands each score to its callback;
    with `embed_prompts`, it also embeds queued prompts (for semantic drift) on the same thread.

    `submit` and `submit_prompt` never block: they return False (and count a drop) when
    `max_queued` jobs are already waiting. Callbacks run on the worker thread; one that must
    touch event-loop state should hop back with `loop.call_soon_threadsafe`.
    """

    def __init__(
        self,
        scorer: RefusalScorer,
        max_queued: int = 256,
        max_batch: int = 16,
        embed_prompts: EmbedPrompts | None = None,
    ) -> None:
        self.scorer = scorer
        self.dropped = 0
        self.scored = 0
        self._embed_prompts = embed_prompts
        self._max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._run, name="turnout-refusals", daemon=True)
        self._thread.start()

    def submit(self, text: str, on_score: OnScore) -> bool:
        return self._put((text, on_score, False))

    def submit_prompt(self, text: str, on_embedding: OnEmbedding) -> bool:
        """Queues a prompt to embed (needs `embed_prompts`)."""
        if self._embed_prompts is None:
            raise ValueError("this worker was started without a prompt encoder")
        return self._put((text, on_embedding, True))

    def _put(self, job: _Job) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[_Job] = []
            stopping = item is None
            if item is not None:
                batch.append(item)
            while not stopping and len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            answers = [job for job in batch if not job[2]]
            prompts = [job for job in batch if job[2]]
            if answers:
                self._score(answers)
            if prompts:
                self._embed(prompts)
            if stopping:
                return

    def _embed(self, batch: list[_Job]) -> None:
        assert self._embed_prompts is not None
        try:
            embeddings = self._embed_prompts([text for text, _, _ in batch])
        except Exception:  # a signal must never take the worker down with it
            log.exception("embedding %d prompts failed", len(batch))
            return
        for (_, on_embedding, _), row in zip(batch, embeddings, strict=True):
            try:
                on_embedding(row)
            except Exception:
                log.exception("a prompt embedding callback failed")

    def _score(self, batch: list[_Job]) -> None:
        try:
            scores = self.scorer.score_batch([text for text, _, _ in batch])
        except Exception:  # a signal must never take the worker down with it
            log.exception("scoring %d answers for refusal failed", len(batch))
            return
        for (_, on_score, _), score in zip(batch, scores, strict=True):
            self.scored += 1
            try:
                on_score(score)
            except Exception:
                log.exception("a refusal score callback failed")

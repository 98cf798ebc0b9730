"""The phrase refusal detector against the labelled evaluation set and its look-alikes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from monitoring.refusals import (
    PHRASE_RULES_VERSION,
    REFUSAL_WINDOW_CHARS,
    PhraseRefusalDetector,
    RefusalDetector,
    detector_name,
)

EVAL_SET = Path(__file__).resolve().parents[2] / "monitoring" / "data" / "refusal_eval.jsonl"
MIN_PRECISION = 0.95
# The refusal rate is read as a change (a jump against its own past, candidate against
# stable), so a detector that misses a steady share of refusals still shows the change; below
# 0.85 it would miss whole families of phrasings and the rate would stop tracking refusals.
MIN_RECALL = 0.85


def examples(split: str | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in EVAL_SET.read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if split is None or row["split"] == split]


def precision_recall(detector: RefusalDetector, rows: list[dict[str, Any]]) -> tuple[float, float]:
    flagged = [(detector.is_refusal(row["text"]), row["refusal"]) for row in rows]
    true_positives = sum(1 for said, truth in flagged if said and truth)
    said_refusal = sum(1 for said, _ in flagged if said)
    refusals = sum(1 for _, truth in flagged if truth)
    return true_positives / said_refusal, true_positives / refusals


def test_eval_set_has_200_labelled_examples_in_six_languages_with_look_alikes() -> None:
    rows = examples()
    assert len(rows) >= 200
    assert {row["lang"] for row in rows} == {"en", "es", "fr", "de", "pt", "zh"}
    assert sum(row["refusal"] for row in rows) >= 100
    kinds = {row["kind"] for row in rows if not row["refusal"]}
    assert {"lookalike", "quoted"} <= kinds
    assert len({row["text"] for row in rows}) == len(rows)


def test_detector_precision_and_recall_on_the_eval_set_meet_their_floors() -> None:
    precision, recall = precision_recall(PhraseRefusalDetector(), examples())
    assert precision >= MIN_PRECISION
    assert recall >= MIN_RECALL


@pytest.mark.parametrize("split", ["dev", "holdout"])
def test_detector_precision_holds_on_each_split(split: str) -> None:
    precision, _ = precision_recall(PhraseRefusalDetector(), examples(split))
    assert precision >= MIN_PRECISION


@pytest.mark.parametrize(
    "text",
    [
        "I can't wait to help you set this up!",
        "The API cannot be called twice with the same key.",
        "I can't help but notice the loop never ends.",
        "The bot answered \"I'm sorry, but I can't help with that.\" and closed the chat.",
        "A typical refusal looks like this: I'm sorry, but I cannot assist with that request.",
        "I can't give you an exact figure, but roughly 60% renew.",
    ],
)
def test_look_alikes_are_answers(text: str) -> None:
    assert not PhraseRefusalDetector().is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I\u2019m sorry, but I can\u2019t provide that.",
        "Lo siento, pero no puedo ayudar con eso.",
        "Je ne peux pas vous aider avec cela.",
        "Das kann ich leider nicht tun.",
        "Desculpe, mas não posso ajudar com isso.",
        "抱歉，我无法帮助你完成这个请求。",  # noqa: RUF001
    ],
)
def test_declines_in_each_language_are_refusals(text: str) -> None:
    assert PhraseRefusalDetector().is_refusal(text)


def test_a_decline_deep_inside_a_long_answer_is_not_read() -> None:
    answer = "Here is the full plan. " * (REFUSAL_WINDOW_CHARS // 20) + "I can't help with that."
    assert not PhraseRefusalDetector().is_refusal(answer)
    assert PhraseRefusalDetector().is_refusal("I can't help with that. " + answer)


def test_the_phrase_rules_are_named_with_a_version_that_follows_their_patterns() -> None:
    assert detector_name(PhraseRefusalDetector()) == f"phrase:{PHRASE_RULES_VERSION}"
    assert len(PHRASE_RULES_VERSION) == 8
    assert int(PHRASE_RULES_VERSION, 16) >= 0  # a hex digest of the patterns

    class Unnamed:
        def is_refusal(self, text: str) -> bool:
            return False

    assert detector_name(Unnamed()) == "custom"

"""The judge scorer against a real HTTP server on loopback speaking the chat-completions API.

The server (tests/support/judge_server.py) stands in for the judging model (a model that
follows the rubric cannot run in this suite: the demo model's weights are random): it answers
REFUSAL when the graded text declines, ANSWER otherwise, something unparseable for one marker
text, and a 500 for another. It records every request, so the test sees the rubric, the route
and the cache at work.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from monitoring.refusal_judge import RUBRIC, UNPARSED, JudgeScorer, parse_verdict
from monitoring.refusal_worker import RefusalScore
from tests.support.judge_server import judge_server as stand_in_judge


@pytest.fixture
def judge_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with stand_in_judge() as running:
        yield running


def test_verdicts_are_parsed_from_the_first_word_only() -> None:
    assert parse_verdict("REFUSAL") == RefusalScore(True, 1.0)
    assert parse_verdict(" answer.") == RefusalScore(False, 0.0)
    assert parse_verdict("**Refusal**") == RefusalScore(True, 1.0)
    assert parse_verdict("The answer is a refusal") is None
    assert parse_verdict("") is None


def test_the_judge_asks_the_route_with_the_rubric_and_caches_its_verdicts(
    judge_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = judge_server
    judge = JudgeScorer(url, "judge-route", api_key="tk-judge")
    texts = ["I can't help with that.", "Here is your summary.", "Lo siento, no puedo ayudar."]
    try:
        first = judge.score_batch(texts)
        again = judge.score_batch([texts[0], texts[1], "MARKER answer", "MARKER answer"])
    finally:
        judge.close()

    assert [s.refusal for s in first] == [True, False, True]
    assert [s.refusal for s in again[:2]] == [True, False]
    # Unparseable verdicts are not guessed: the repeated answer was asked once in its batch.
    assert again[2:] == [UNPARSED, UNPARSED]
    assert judge.unparsed == 1
    assert judge.asked == len(seen) == 3 + 1  # the two answers seen before came from the cache
    assert judge.name == "judge:judge-route"
    # The batch's calls run concurrently, so they may arrive in any order.
    (request,) = [r for r in seen[:3] if r["messages"][1]["content"].endswith(texts[0])]
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "judge-route"
    assert request["auth"] == "Bearer tk-judge"
    assert request["messages"][0] == {"role": "system", "content": RUBRIC}
    assert request["messages"][1]["content"].endswith(texts[0])
    assert request["temperature"] == 0


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(
    judge_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = judge_server
    judge = JudgeScorer(url, "judge-route", cache_size=2)
    try:
        for text in ["a", "b", "a", "c", "a", "b"]:
            judge.score_batch([text])
    finally:
        judge.close()
    # a, b asked; a cached; c asked (evicts b); a cached; b asked again.
    assert [r["messages"][1]["content"][-1] for r in seen] == ["a", "b", "c", "b"]


def test_a_failed_call_gives_no_verdict_and_is_asked_again(
    judge_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = judge_server
    judge = JudgeScorer(url, "judge-route", rubric="Say REFUSAL or ANSWER.")
    try:
        scores = judge.score_batch(["FAIL please", "FAIL please"])  # one call for both
        again = judge.score_batch(["FAIL please"])  # not cached: asked again
    finally:
        judge.close()
    assert scores == [UNPARSED, UNPARSED]
    assert again == [UNPARSED]
    assert judge.failed == len(seen) == 2
    assert seen[0]["messages"][0] == {"role": "system", "content": "Say REFUSAL or ANSWER."}


def test_a_batch_s_calls_run_concurrently_up_to_the_limit() -> None:
    """The stand-in holds each call whose text says SLOW for 0.3 s and records how many were in
    flight at once: a batch of 6 new answers overlaps its calls, at most `max_concurrent`."""
    with stand_in_judge(slow_s=0.3) as (url, seen):
        judge = JudgeScorer(url, "judge-route", max_concurrent=3)
        try:
            scores = judge.score_batch([f"SLOW answer {n}, I can't." for n in range(6)])
        finally:
            judge.close()
        in_flight = [request["in_flight"] for request in seen]
    assert scores == [RefusalScore(True, 1.0)] * 6
    assert 1 < max(in_flight) <= 3

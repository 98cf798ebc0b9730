"""With `monitoring.refusal_detector: judge`, the gateway asks the configured route to grade each
answer, with the configured rubric, on its signals worker; verdicts reach the refusal counter
under the judge's name and repeated answers come from the cache.

In-process gateway (tests/support/inprocess.py) over an in-memory upstream; the judge is a
loopback HTTP server standing in for a judging model (tests/support/judge_server.py: no model
that follows the rubric runs in this suite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config import MonitoringConfig
from tests.support.demo import gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.judge_server import judge_server
from tests.support.upstream import Answer, InMemoryUpstream

RUBRIC = "Grade the answer. Reply REFUSAL or ANSWER, one word."
CHECKS = "turnout_refusal_checks_total"


def _ask(gateway: InProcessGateway, answer: str) -> None:
    gateway.upstream.will_answer(Answer(content=answer))
    reply = gateway.client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "Cancel my order."}]},
    )
    assert reply.status_code == 200, reply.text


def _wait_for(gateway: InProcessGateway, checks: float) -> None:
    deadline = time.monotonic() + 30
    while gateway.metric(CHECKS, route="chat", detector="judge:judge-route") < checks:
        assert time.monotonic() < deadline, "the judge's verdicts did not arrive"
        time.sleep(0.02)


def test_the_judge_grades_answers_with_the_configured_route_and_rubric(tmp_path: Path) -> None:
    with judge_server() as (url, seen):
        monitoring = {
            "refusal_detector": "judge",
            "refusal_judge": {"url": url, "route": "judge-route", "rubric": RUBRIC},
        }
        config = gateway_config(["http://vllm.test"], monitoring=monitoring)
        with in_process_gateway(config, tmp_path) as gateway:
            _ask(gateway, "I'm sorry, but I can't.")
            _ask(gateway, "Your order 1234 is cancelled; the refund follows in 3 days.")
            _wait_for(gateway, 2)
            _ask(gateway, "I'm sorry, but I can't.")  # the same answer: from the cache
            _wait_for(gateway, 3)
            labels = {"route": "chat", "detector": "judge:judge-route"}
            refusals = gateway.metric(CHECKS, result="refusal", **labels)
            answers = gateway.metric(CHECKS, result="answer", **labels)
    assert (refusals, answers) == (2, 1)
    assert len(seen) == 2
    assert {request["model"] for request in seen} == {"judge-route"}
    # Answers judged in one batch are asked concurrently: find the refusal's call.
    (asked,) = [r for r in seen if r["messages"][1]["content"].endswith("I'm sorry, but I can't.")]
    assert asked["messages"][0] == {"role": "system", "content": RUBRIC}


def test_cascade_judge_asks_the_route_only_for_what_the_cheap_stages_leave(
    tmp_path: Path,
) -> None:
    """`cascade-judge`: the n-gram stage decides the clear answer in the gateway, the judge
    gets the uncertain one, and both verdicts count under the cascade's name."""
    pytest.importorskip("numpy")
    from monitoring.refusal_cascade import CascadeDetector
    from monitoring.refusal_judge import JudgeScorer

    clear, uncertain = (
        "Your order 1234 is cancelled; the refund follows in 3 days.",
        "Sorry, can't.",
    )
    with judge_server() as (url, seen):
        monitoring = {
            "refusal_detector": "cascade-judge",
            "refusal_judge": {"url": url, "route": "judge-route"},
        }
        detector = CascadeDetector(judge=JudgeScorer(url, "judge-route")).name
        config = gateway_config(["http://vllm.test"], monitoring=monitoring)
        with in_process_gateway(config, tmp_path) as gateway:
            _ask(gateway, clear)
            _ask(gateway, uncertain)
            labels = {"route": "chat", "detector": detector}
            deadline = time.monotonic() + 30
            while gateway.metric(CHECKS, **labels) < 2:
                assert time.monotonic() < deadline, "the verdicts did not arrive"
                time.sleep(0.02)
            refusals = gateway.metric(CHECKS, result="refusal", **labels)
            answers = gateway.metric(CHECKS, result="answer", **labels)
    assert (refusals, answers) == (1, 1)
    assert [request["messages"][-1]["content"].split("\n\n", 1)[1] for request in seen] == [
        uncertain
    ]


@pytest.mark.parametrize("detector", ["judge", "cascade-judge"])
def test_the_judge_detectors_need_a_route(detector: str) -> None:
    with pytest.raises(ValueError, match=r"monitoring\.refusal_judge\.route"):
        MonitoringConfig(refusal_detector=detector)


def test_a_shadow_s_pairs_are_judged_by_the_configured_judge(
    tmp_path: Path, synthetic_store: Path
) -> None:
    """The app wires the judge into the shadow comparison: the candidate's answer, which the
    phrase rules pass, is a refusal to the judge, and the pair counts it so."""
    served = "The printer team owns this."
    judged = "Printers can't print without toner: the printer team owns this."
    upstream = InMemoryUpstream(
        answers={"support-triage@v1": lambda f: served, "summarize@v1": lambda f: judged}
    )
    route = {
        "stable": "support-triage@v1",
        "candidate": "summarize@v1",
        "mode": "shadow",
        "shadow_percent": 100,
    }
    with judge_server() as (url, seen):
        monitoring = {"refusal_detector": "judge", "refusal_judge": {"url": url, "route": "j"}}
        config = gateway_config(
            ["http://vllm.test"], synthetic_store, monitoring=monitoring, routes={"judged": route}
        )
        with in_process_gateway(config, tmp_path, upstream) as gateway:
            for _ in range(3):
                reply = gateway.client.post(
                    "/v1/chat/completions",
                    json={"model": "judged", "messages": [{"role": "user", "content": "Jam."}]},
                )
                assert reply.json()["choices"][0]["message"]["content"] == served
            events = "turnout_shadow_signal_events_total"
            labels = {"route": "judged", "signal": "refusal", "arm": "candidate"}
            deadline = time.monotonic() + 30
            while gateway.metric(events, result="bad", **labels) < 3:
                assert time.monotonic() < deadline, "the judged pairs were not counted"
                time.sleep(0.02)
            stable = gateway.metric(events, result="bad", **{**labels, "arm": "stable"})
    assert stable == 0
    graded = sorted(request["messages"][-1]["content"].split("\n\n", 1)[1] for request in seen)
    assert graded == sorted([served, judged])  # once each: repeats come from the cache

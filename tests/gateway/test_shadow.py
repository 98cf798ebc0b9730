"""Shadow rollouts in process: the real endpoint, proxy, admission, dispatcher and comparison,
against an in-memory upstream (`tests/support/upstream.py`); no model is needed to test
that the caller gets stable's answer only, that copies are compared and counted, and that
overload sheds copies before real requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import REGISTRY

from gateway.api.errors import install_error_handlers
from gateway.api.openai import InferenceEndpoints
from gateway.config import LimitsConfig, TurnoutConfig, parse_config
from gateway.errors import ConfigError, Overloaded
from gateway.outcomes.recorder import OutcomeRecorder, SignalBudget
from gateway.protection.auth import issue_key, load_reviewer_keyring
from gateway.protection.guard import RequestGuard
from gateway.protection.ratelimit import LocalRateLimiter
from gateway.review.access import ReviewAccess
from gateway.review.api import review_api_router
from gateway.rollouts.analysis import BinomialCounts, RolloutRecorder
from gateway.rollouts.model import DEFAULT_STEPS, Rollout, Why, declare, start
from gateway.routing.table import PublishedTable, build_routing_table
from gateway.shadow.dispatch import ShadowDispatcher
from gateway.shadow.evidence import PairTally
from gateway.shadow.recorder import PairRecorder
from gateway.shadow.settings import ShadowSettings
from gateway.upstream.admission import AdmissionGate, AdmissionLimits, BackendGates
from gateway.upstream.backends import BackendPool
from gateway.upstream.breaker import BreakerPolicy, RetryBudget, RetryBudgetPolicy
from gateway.upstream.proxy import InferenceProxy
from gateway.upstream.residency import Residency
from monitoring.drift import DriftConfig, DriftMonitor
from monitoring.refusal_judge import JudgeScorer
from monitoring.refusal_worker import RefusalWorker
from monitoring.refusals import PhraseRefusalDetector
from tests.support.judge_server import judge_server
from tests.support.upstream import InMemoryUpstream
from training.capture import CaptureSettings, SqliteCaptureSink, connect
from training.review.policy import ReviewPolicy
from training.review.store import ReviewQueue

BACKEND = "http://backend.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


STABLE, CANDIDATE = "triage@v1", "triage@v2"
SCHEMA = {
    "type": "object",
    "properties": {"team": {"type": "string"}, "urgent": {"type": "boolean"}},
    "required": ["team", "urgent"],
}


def shadow_rollout(share: float = 100.0, route: str = "triage") -> Rollout:
    why = Why("operator", "test", "shadow started", 0.0)
    current = declare(route, STABLE)
    return start(
        current,
        rollout_id="shadow-1",
        candidate=CANDIDATE,
        mode="shadow",
        steps=DEFAULT_STEPS,
        why=why,
        shadow_percent=share,
    ).rollout


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Gateway:
    client: httpx.AsyncClient
    upstream: InMemoryUpstream
    shadows: ShadowDispatcher
    tally: PairTally
    gate: AdmissionGate
    capture: SqliteCaptureSink
    rollout: Rollout
    recorder: RolloutRecorder


@asynccontextmanager
async def gateway(
    tmp_path: Path,
    upstream: InMemoryUpstream,
    *,
    route: dict[str, Any] | None = None,
    share: float = 100.0,
    max_concurrent: int = 8,
    max_queued: int = 8,
    settings: ShadowSettings | None = None,
    route_name: str = "triage",
    review: ReviewPolicy | None = None,
    judge: RefusalWorker | None = None,
    pair_refusals: PhraseRefusalDetector | None = None,
) -> AsyncIterator[Gateway]:
    config = TurnoutConfig.model_validate(
        {"routes": {route_name: {"stable": STABLE, **(route or {})}}}
    )
    rollout = shadow_rollout(share, route_name)
    table = PublishedTable(build_routing_table(config, {route_name: rollout}))
    residency = Residency([BACKEND])
    residency.set(BACKEND, frozenset({STABLE, CANDIDATE}))
    pool = BackendPool([BACKEND], residency, BreakerPolicy())
    gates = BackendGates([BACKEND], AdmissionLimits(max_concurrent, max_queued, 5.0))
    proxy = InferenceProxy(upstream, pool, gates, RetryBudget(RetryBudgetPolicy()))
    capture = SqliteCaptureSink(
        CaptureSettings(path=str(tmp_path / "captures.db"), default={"success_sample_rate": 1.0}),
        review=None if review is None else {route_name: review},
    )
    tally = PairTally(lambda route: table.current.shadow_categories(route))  # as the app does
    recorder = RolloutRecorder()
    shadows = ShadowDispatcher(
        proxy,
        PairRecorder(tally, pair_refusals or PhraseRefusalDetector(), capture, judge=judge),
        settings or ShadowSettings(),
    )
    endpoints = InferenceEndpoints(
        table,
        proxy,
        pool,
        OutcomeRecorder(
            recorder,
            PhraseRefusalDetector(),
            DriftMonitor(DriftConfig()),
            capture,
            SignalBudget(10_000),
        ),
        RequestGuard(None, None, LocalRateLimiter(), LimitsConfig()),
        1_000_000,
        shadows=shadows,
    )
    transport = httpx.ASGITransport(app=endpoints)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        try:
            yield Gateway(
                client, upstream, shadows, tally, gates[BACKEND], capture, rollout, recorder
            )
        finally:
            await asyncio.to_thread(capture.close)


def ask(text: str, route: str = "triage", **extra: Any) -> dict[str, Any]:
    return {"model": route, "messages": [{"role": "user", "content": text}], **extra}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the loop (about 5 s at most)."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


async def settled(gw: Gateway, pairs: int) -> None:
    """Wait until `pairs` pairs were compared and no copy is in flight."""
    await until(
        lambda: gw.tally.snapshot(gw.rollout).pairs >= pairs and not gw.shadows.in_flight,
        f"{pairs} compared pairs",
    )


@pytest.mark.anyio
async def test_caller_gets_only_stable_answer_and_every_request_is_compared(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(
        answers={
            STABLE: lambda f: "The printer team owns this.",
            CANDIDATE: lambda f: "I can't help.",
        }
    )
    async with gateway(tmp_path, upstream) as gw:
        for n in range(5):
            answer = await gw.client.post("/v1/chat/completions", json=ask(f"ticket {n}"))
            assert answer.status_code == 200
            assert answer.headers["x-turnout-arm"] == "stable"
            assert (
                answer.json()["choices"][0]["message"]["content"] == "The printer team owns this."
            )
            assert answer.json()["model"] == "triage"
        await settled(gw, 5)
        counts = gw.tally.snapshot(gw.rollout)
    assert sorted(body["model"] for body in upstream.received()) == [STABLE] * 5 + [CANDIDATE] * 5
    assert counts.pairs == 5
    assert counts.discordant("refusal") == (5, 0)  # the candidate alone refused, every time
    assert counts.agreement("text")[0] == 5
    # The canary tally stays empty: the canary this shadow may become starts afresh.
    assert all(s.stable.trials == 0 for s in gw.recorder.snapshot(gw.rollout).signals)
    rows = (
        connect(Path(gw.capture.path))
        .execute("SELECT request_id, arm, version FROM captures ORDER BY seq")
        .fetchall()
    )
    by_request: dict[str, set[tuple[str, str]]] = {}
    for request_id, arm, version in rows:
        by_request.setdefault(request_id, set()).add((arm, version))
    # Each pair is captured under one request id: stable's answer and the candidate's.
    assert len(by_request) == 5
    assert all(
        sides == {("stable", STABLE), ("shadow", CANDIDATE)} for sides in by_request.values()
    )


@pytest.mark.anyio
async def test_the_copy_is_sent_only_once_the_stable_answer_is_out(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(answers={STABLE: lambda f: "ok", CANDIDATE: lambda f: "ok"})
    async with gateway(tmp_path, upstream) as gw:
        upstream.hold(STABLE)
        asked = ask("ticket", temperature=0.5, stream=True)
        served = asyncio.create_task(gw.client.post("/v1/chat/completions", json=asked))
        await until(lambda: len(upstream.received(STABLE)) == 1, "the stable request")
        for _ in range(50):  # the loop runs on while stable's answer is held
            await asyncio.sleep(0)
        assert upstream.received(CANDIDATE) == []
        assert gw.shadows.in_flight == 1  # taken, counted against the shadows' budget
        upstream.release(STABLE)
        assert (await served).status_code == 200
        await settled(gw, 1)
    [copy] = upstream.received(CANDIDATE)
    assert copy["messages"] == asked["messages"]
    assert copy["temperature"] == 0.5
    assert "stream" not in copy


@pytest.mark.anyio
async def test_a_request_cancelled_before_its_answer_sends_no_copy_and_frees_its_budget(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(answers={STABLE: lambda f: "ok", CANDIDATE: lambda f: "ok"})
    settings = ShadowSettings(max_in_flight=1)
    async with gateway(tmp_path, upstream, settings=settings, route_name="cut") as gw:
        failed = metric("turnout_shadow_requests_total", route="cut", result="failed")
        upstream.hold(STABLE)
        served = asyncio.create_task(gw.client.post("/v1/chat/completions", json=ask("a", "cut")))
        await until(lambda: len(upstream.received(STABLE)) == 1, "the stable request")
        assert gw.shadows.in_flight == 1
        served.cancel()
        with pytest.raises(asyncio.CancelledError):
            await served
        assert gw.shadows.in_flight == 0  # its place in the budget is given back
        assert metric("turnout_shadow_requests_total", route="cut", result="failed") == failed + 1
        upstream.release(STABLE)
        answer = await gw.client.post("/v1/chat/completions", json=ask("b", "cut"))
        assert answer.status_code == 200
        await settled(gw, 1)
    assert [body["messages"][0]["content"] for body in upstream.received(CANDIDATE)] == ["b"]


@pytest.mark.anyio
async def test_flagged_pairs_reach_the_review_api_with_both_answers_side_by_side(
    tmp_path: Path, anyio_backend: str
) -> None:
    agreed = '{"team": "printers", "urgent": false}'
    candidate = {
        "ticket 0": agreed,  # agrees: not flagged, and the sample rate is 0
        "ticket 1": "I can't help with that.",  # refuses where stable answered
        "ticket 2": '{"team": "network", "urgent": false}',  # another team: disagrees
    }
    upstream = InMemoryUpstream(
        answers={
            STABLE: lambda f: agreed,
            CANDIDATE: lambda f: candidate[f["messages"][0]["content"]],
        }
    )
    async with gateway(tmp_path, upstream, review=ReviewPolicy(sample_rate=0.0)) as gw:
        served = {}
        for text in candidate:
            answer = await gw.client.post("/v1/chat/completions", json=ask(text))
            assert answer.json()["choices"][0]["message"]["content"] == agreed
            served[text] = answer.headers["x-request-id"]
        await settled(gw, 3)  # each pair is offered to capture as it is counted
        await asyncio.to_thread(gw.capture.close)

    key = issue_key()
    keys = tmp_path / "admins.yaml"
    keys.write_text(yaml.safe_dump({"admins": {}, "reviewers": {"rita": [{"sha256": key.sha256}]}}))
    app = FastAPI()
    install_error_handlers(app)
    queue = ReviewQueue(Path(gw.capture.path))
    app.include_router(
        review_api_router(queue, ReviewAccess(None, load_reviewer_keyring(keys)), lambda r: None)
    )
    shown = {}
    auth = {"authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://console"
    ) as console:
        while item := (await console.get("/review/api/next", headers=auth)).json()["item"]:
            again = (await console.get(f"/review/api/items/{item['id']}", headers=auth)).json()
            assert again["item"]["second_answer"] == item["second_answer"]
            shown[item["request_id"]] = item
            judged = await console.post(
                f"/review/api/items/{item['id']}/judgement", headers=auth, json={"verdict": "bad"}
            )
            assert judged.status_code == 200
    queue.close()
    assert set(shown) == {served["ticket 1"], served["ticket 2"]}
    refused, other = shown[served["ticket 1"]], shown[served["ticket 2"]]
    assert (refused["reason"], refused["flags"]) == (
        "candidate_worse",
        ["candidate_worse", "disagreed"],
    )
    assert (other["reason"], other["flags"]) == ("disagreed", ["disagreed"])
    for item, second in ((refused, candidate["ticket 1"]), (other, candidate["ticket 2"])):
        assert (item["arm"], item["version"], item["answer"]) == ("stable", STABLE, agreed)
        assert (item["second_answer"], item["second_version"]) == (second, CANDIDATE)


@pytest.mark.anyio
async def test_a_streamed_request_is_shadowed_as_a_whole_request(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(
        answers={
            STABLE: lambda f: '{"team": "it", "urgent": true}',
            CANDIDATE: lambda f: '{"team": "it", "urgent": false}',
        }
    )
    route = {"schema": SCHEMA, "stream_validation": "buffer"}
    async with gateway(tmp_path, upstream, route=route) as gw:
        answer = await gw.client.post(
            "/v1/chat/completions", json=ask("vpn down", stream=True, stream_options={})
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        await settled(gw, 1)
        counts = gw.tally.snapshot(gw.rollout)
    candidate_fields = upstream.received(CANDIDATE)
    assert len(candidate_fields) == 1
    assert "stream" not in candidate_fields[0]
    assert "stream_options" not in candidate_fields[0]
    # Held to the route's contract as stable is: guided decoding with the same schema.
    assert candidate_fields[0]["response_format"]["json_schema"]["schema"] == SCHEMA
    pairs, exact, score = counts.agreement("structured")
    assert (pairs, exact, score) == (1, 0.0, 0.5)  # `team` agrees, `urgent` does not


@pytest.mark.anyio
async def test_each_pair_is_counted_in_its_request_s_category(
    tmp_path: Path, anyio_backend: str
) -> None:
    def candidate(fields: dict[str, Any]) -> str:
        billing = fields.get("metadata", {}).get("topic") == "billing"
        return "I can't help." if billing else "The printer team owns this."

    upstream = InMemoryUpstream(
        answers={STABLE: lambda f: "The printer team owns this.", CANDIDATE: candidate}
    )
    route = {"shadow_category": {"metadata_key": "topic", "values": ["billing", "hardware"]}}
    async with gateway(tmp_path, upstream, route=route) as gw:
        for topic in ("billing", "hardware", "billing", None, "weather"):
            extra = {} if topic is None else {"metadata": {"topic": topic, "app": "desk"}}
            answer = await gw.client.post("/v1/chat/completions", json=ask("ticket", **extra))
            assert answer.status_code == 200
        await settled(gw, 5)
        counts = gw.tally.snapshot(gw.rollout)
    assert counts.categories == ("billing", "hardware", "other")
    assert counts.discordant("refusal") == (2, 0)
    billing, hardware, other = (counts.within(c) for c in ("billing", "hardware", "other"))
    assert (billing.pairs, billing.discordant("refusal")) == (2, (2, 0))
    assert (hardware.pairs, hardware.discordant("refusal")) == (1, (0, 0))
    assert other.pairs == 2  # no metadata, and a value the route does not declare
    # Both sides get the metadata as the caller sent it.
    sent = [body.get("metadata") for body in upstream.received()]
    assert sent.count({"topic": "billing", "app": "desk"}) == 4


# The phrase rules and the judge (its loopback stand-in) disagree on both candidate answers.
SERVED = "The printer team owns this."
JUDGED_REFUSAL = "Printers can't print without toner: the printer team owns this."
PHRASE_REFUSAL = "I am unable to assist with that request."


@pytest.mark.anyio
async def test_with_a_judge_both_answers_of_a_pair_are_judged_by_it_once_each(
    tmp_path: Path, anyio_backend: str
) -> None:
    phrases = PhraseRefusalDetector()
    assert not phrases.is_refusal(JUDGED_REFUSAL)
    assert phrases.is_refusal(PHRASE_REFUSAL)
    candidate = {"t0": JUDGED_REFUSAL, "t1": PHRASE_REFUSAL, "t2": JUDGED_REFUSAL}
    upstream = InMemoryUpstream(
        answers={
            STABLE: lambda f: SERVED,
            CANDIDATE: lambda f: candidate[f["messages"][0]["content"]],
        }
    )
    with judge_server() as (url, seen):
        worker = RefusalWorker(JudgeScorer(url, "judge-route"))
        try:
            async with gateway(tmp_path, upstream, judge=worker) as gw:
                for text in candidate:
                    answer = await gw.client.post("/v1/chat/completions", json=ask(text))
                    assert answer.status_code == 200
                await settled(gw, 3)
                counts = gw.tally.snapshot(gw.rollout)
        finally:
            await asyncio.to_thread(worker.close)
    # The judge's verdicts, not the phrases': two refusals by the candidate alone.
    assert counts.discordant("refusal") == (2, 0)
    assert counts.arm("refusal", "stable") == BinomialCounts(0, 3)
    assert counts.arm("refusal", "candidate") == BinomialCounts(2, 3)
    graded = sorted(request["messages"][-1]["content"].split("\n\n", 1)[1] for request in seen)
    assert graded == sorted([SERVED, JUDGED_REFUSAL, PHRASE_REFUSAL])  # repeats from the cache
    assert {request["model"] for request in seen} == {"judge-route"}


class CountingPhrases(PhraseRefusalDetector):
    """The phrase rules (same name and version), keeping every text they scored."""

    def __init__(self) -> None:
        self.scored: list[str] = []

    def is_refusal(self, text: str) -> bool:
        self.scored.append(text)
        return super().is_refusal(text)


@pytest.mark.anyio
async def test_each_text_of_a_pair_is_scored_once_reusing_the_served_verdict(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The stable answer's verdict is the one the served path gave it (the same rules); a
    candidate that answered the same text gets that verdict; only other texts are scored."""
    candidate = {"t0": SERVED, "t1": PHRASE_REFUSAL, "t2": SERVED, "t3": PHRASE_REFUSAL}
    upstream = InMemoryUpstream(
        answers={
            STABLE: lambda f: SERVED if f["messages"][0]["content"] != "t3" else PHRASE_REFUSAL,
            CANDIDATE: lambda f: candidate[f["messages"][0]["content"]],
        }
    )
    pair_phrases = CountingPhrases()
    async with gateway(tmp_path, upstream, pair_refusals=pair_phrases) as gw:
        for text in candidate:
            answer = await gw.client.post("/v1/chat/completions", json=ask(text))
            assert answer.status_code == 200
        await settled(gw, 4)
        counts = gw.tally.snapshot(gw.rollout)
    # The pairs' stable answers were never scored again, nor t3's candidate (same text as its
    # stable answer); t1's candidate refusal was, once.
    assert pair_phrases.scored == [PHRASE_REFUSAL]
    assert counts.arm("refusal", "stable") == BinomialCounts(1, 4)
    assert counts.arm("refusal", "candidate") == BinomialCounts(2, 4)
    assert counts.discordant("refusal") == (1, 0)


@pytest.mark.parametrize(
    ("category", "message"),
    [
        ({"metadata_key": "topic", "values": []}, r"shadow_category\.values"),
        ({"metadata_key": "topic", "values": ["a", "a"]}, r"distinct"),
        ({"metadata_key": "topic", "values": ["other"]}, r"not `other`"),
        ({"metadata_key": "topic", "values": [str(n) for n in range(9)]}, r"at most 8"),
        ({"values": ["a"]}, r"shadow_category\.metadata_key"),
    ],
)
def test_a_bad_category_setting_is_refused_naming_the_key(
    category: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"routes": {"triage": {"stable": STABLE, "shadow_category": category}}})


@pytest.mark.anyio
async def test_share_decides_how_many_requests_are_copied(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(answers={STABLE: lambda f: "ok", CANDIDATE: lambda f: "ok"})
    async with gateway(tmp_path, upstream, share=25.0) as gw:
        for n in range(400):
            await gw.client.post("/v1/chat/completions", json=ask(f"t{n}"))
        await settled(gw, 1)
    copies = len(upstream.received(CANDIDATE))
    assert 60 <= copies <= 140  # 25 % of 400 is 100; the draw is per request


@pytest.mark.anyio
async def test_overload_sheds_shadows_before_any_real_request(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(answers={STABLE: lambda f: "ok", CANDIDATE: lambda f: "ok"})
    async with gateway(tmp_path, upstream, max_concurrent=4, max_queued=0) as gw:
        preempted = metric("turnout_shadow_requests_total", route="triage", result="preempted")
        dropped = metric("turnout_shadow_requests_total", route="triage", result="dropped_load")
        upstream.hold(CANDIDATE)
        # Two requests answered; their copies, sent once the answers were out, hold 2 slots.
        for n in range(2):
            answered = await gw.client.post("/v1/chat/completions", json=ask(f"a{n}"))
            assert answered.status_code == 200
        await until(lambda: gw.gate.lent_to_shadows == 2, "2 copies holding borrowed slots")
        upstream.hold(STABLE)
        # Four real requests: with no queue at all they are admitted only because the copies
        # give their slots back.
        second = [
            asyncio.create_task(gw.client.post("/v1/chat/completions", json=ask(f"b{n}")))
            for n in range(4)
        ]
        await until(lambda: gw.gate.in_flight == 4, "4 real requests in flight")
        assert gw.gate.lent_to_shadows == 0
        await until(lambda: upstream.cancelled == [CANDIDATE, CANDIDATE], "2 copies cancelled")
        # A fifth real request is past capacity with nothing left to shed: it alone is refused,
        # and its copy, finding no free slot, is dropped.
        fifth = await gw.client.post("/v1/chat/completions", json=ask("c"))
        assert fifth.status_code == 503
        upstream.release(STABLE)
        answers = await asyncio.gather(*second)
        assert [a.status_code for a in answers] == [200, 200, 200, 200]
        assert metric("turnout_shadow_requests_total", route="triage", result="preempted") == (
            preempted + 2
        )
        assert metric("turnout_shadow_requests_total", route="triage", result="dropped_load") == (
            dropped + 1
        )
        upstream.release(CANDIDATE)
        await settled(gw, 4)  # the four later requests' copies, sent after their answers


@pytest.mark.anyio
async def test_shadows_beyond_their_own_budget_are_dropped_and_counted(
    tmp_path: Path, anyio_backend: str
) -> None:
    upstream = InMemoryUpstream(answers={STABLE: lambda f: "ok", CANDIDATE: lambda f: "ok"})
    settings = ShadowSettings(max_in_flight=1)
    async with gateway(tmp_path, upstream, settings=settings, route_name="budgeted") as gw:
        before = metric("turnout_shadow_requests_total", route="budgeted", result="dropped_budget")
        upstream.hold(CANDIDATE)
        for n in range(3):
            answer = await gw.client.post("/v1/chat/completions", json=ask(f"t{n}", "budgeted"))
            assert answer.status_code == 200  # stable answers while the copy is held
        assert gw.shadows.in_flight == 1
        upstream.release(CANDIDATE)
        await settled(gw, 1)
        after = metric("turnout_shadow_requests_total", route="budgeted", result="dropped_budget")
    assert after - before == 2


def test_a_shadow_slot_is_never_lent_while_a_real_request_waits() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=4, queue_timeout_s=5))
        async with gate.slot():
            waiting = asyncio.create_task(gate.slot().__aenter__())
            await asyncio.sleep(0)
            assert gate.queued == 1
            assert gate.lend_to_shadow(lambda: None) is None
        await waiting
        assert gate.in_flight == 1

    asyncio.run(scenario())


def test_a_real_request_takes_a_lent_slot_at_once() -> None:
    async def scenario() -> None:
        gate = AdmissionGate(AdmissionLimits(max_concurrent=1, max_queued=0, queue_timeout_s=5))
        cancelled: list[bool] = []
        token = gate.lend_to_shadow(lambda: cancelled.append(True))
        assert token is not None
        async with gate.slot():  # no queue: it would be refused if the shadow kept the slot
            assert cancelled == [True]
            gate.give_back(token)  # the cancelled copy ends: nothing more to give back
            assert gate.in_flight == 1
            assert gate.lent_to_shadows == 0
        with pytest.raises(Overloaded):
            async with gate.slot(), gate.slot():
                pass

    asyncio.run(scenario())

"""Two gateway processes share one canary through Redis, in front of a real vLLM.

The candidate is a real adapter that got worse: our QLoRA trainer taught it to refuse every
request. Neither replica sees enough of it to roll it back alone; their pooled evidence does,
and both stop sending it traffic.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.bench.redis_server import RedisServer
from gateway.rollouts.analysis import DEFAULT_ALPHA, BinomialCounts, RolloutRecorder, log_e_value
from gateway.rollouts.audit import read_audit_log
from gateway.rollouts.model import sticky_position
from monitoring.refusals import PhraseRefusalDetector
from tests.support.demo import BASE_MODEL
from tests.support.processes import running_gateway
from tests.support.rollouts import ADMIN, config_for
from tests.support.waiting import wait_until
from training.qlora import TrainConfig, train

pytestmark = pytest.mark.slow

REFUSAL = "I'm sorry, but I can't help with that."
ROUTE = "assist"
PER_REPLICA = 4  # candidate requests, and as many on stable, that each replica serves


def _chat_lines(count: int, first: int) -> str:
    return "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Summarise ticket {n}: printer {n % 7} jammed."},
                    {"role": "assistant", "content": REFUSAL},
                ]
            }
        )
        for n in range(first, first + count)
    )


@pytest.fixture(scope="module")
def store_with_refuser(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo adapters' store plus `refuser@v1`, trained here to answer every prompt with a
    refusal (about 12 s), and pushed as an operator would."""
    folder = tmp_path_factory.mktemp("refuser")
    store = folder / "store"
    shutil.copytree(demo_model / "adapters", store)
    dataset = folder / "dataset"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text(_chat_lines(32, 0))
    (dataset / "validation.jsonl").write_text(_chat_lines(8, 1000))
    # Full-precision base, as vLLM serves it: the greedy answer then matches what was learnt.
    settings = TrainConfig(
        rank=16, alpha=32, dropout=0.0, learning_rate=5e-3, warmup_steps=5, max_steps=150,
        epochs=1000, early_stopping_patience=1000, eval_every_steps=50, load_in_4bit=False,
    )  # fmt: skip
    trained = train(str(demo_model / "base"), dataset, folder / "run", settings, progress=False)
    pushed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "adapters", "push", str(trained.adapter_dir),
         "--name", "refuser", "--store", str(store), "--base-model", str(demo_model / "base"),
         "--base-name", BASE_MODEL],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    return store


def _chat(origin: str, caller: str) -> httpx.Response:
    answer = httpx.post(
        f"{origin}/v1/chat/completions",
        json={
            "model": ROUTE,
            "messages": [{"role": "user", "content": f"Summarise ticket {caller}."}],
            "max_tokens": 24,
            "temperature": 0,
        },
        headers={"x-turnout-key": caller},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer


def _route(origin: str) -> dict[str, Any]:
    view = httpx.get(f"{origin}/admin/routes/{ROUTE}", headers=ADMIN, timeout=10)
    assert view.status_code == 200, view.text
    return dict(view.json())


def _refusal_trials(origin: str) -> float | None:
    """The candidate's refusal-checked requests in the route's latest analysis."""
    analysis = _route(origin)["analysis"]
    return None if analysis is None else analysis["numbers"].get("refusal.candidate_trials")


def _serve(origin: str, callers: list[str], arm: str) -> None:
    detector = PhraseRefusalDetector()
    for caller in callers:
        answer = _chat(origin, caller)
        assert answer.headers["x-turnout-arm"] == arm
        text = answer.json()["choices"][0]["message"]["content"]
        assert detector.is_refusal(text) == (arm == "candidate"), text


def test_replicas_pool_their_evidence_and_both_roll_back_a_refusing_candidate(
    vllm_url: str,
    demo_model: Path,
    store_with_refuser: Path,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # The arithmetic the test relies on: one replica's share is not evidence enough, two are.
    threshold = math.log(len(RolloutRecorder().signal_names) / DEFAULT_ALPHA)  # alpha / k each
    share = PER_REPLICA
    assert log_e_value(BinomialCounts(share, share), BinomialCounts(0, share)) < threshold
    assert log_e_value(BinomialCounts(2 * share, 2 * share), BinomialCounts(0, 2 * share)) >= (
        threshold
    )

    canary = {
        "stable": "summarize@v1",
        "candidate": "refuser@v1",
        "mode": "canary",
        "steps": [50, 100],
        "min_requests_per_step": 1000,  # no promotion while the test runs
    }
    replicas = []
    for name in ("one", "two"):
        config = config_for(vllm_url, demo_model, tmp_path / name / "state", **{ROUTE: canary})
        config["adapters"] = {"store": str(store_with_refuser)}
        config["state"].update(redis_url=redis_server.url, analysis_interval_s=0.2)
        replicas.append((tmp_path / name, config))

    with (
        running_gateway(replicas[0][1], replicas[0][0]) as one,
        running_gateway(replicas[1][1], replicas[1][0]) as two,
    ):
        rollout_id = _route(one)["rollout_id"]
        assert _route(two)["rollout_id"] == rollout_id
        callers = [f"caller-{n}" for n in range(400)]
        on_candidate = [c for c in callers if sticky_position(c, rollout_id) < 50][: 2 * share]
        on_stable = [c for c in callers if sticky_position(c, rollout_id) >= 50][: 2 * share]

        # Replica one serves its share; its looks pool it in Redis, and it is not enough.
        _serve(one, on_candidate[:share], "candidate")
        _serve(one, on_stable[:share], "stable")
        wait_until(lambda: _refusal_trials(one) == share, 10, "replica one to pool its evidence")
        time.sleep(1.0)  # five more looks on each replica
        for origin in (one, two):
            assert _route(origin)["candidate"] == "refuser@v1"

        # Replica two serves as much again (alone, just as little); pooled, it is enough. The
        # rollback may come before its last candidate callers arrive: they then get stable.
        _serve(two, on_stable[share:], "stable")
        for caller in on_candidate[share:]:
            _chat(two, caller)
        wait_until(
            lambda: all(_route(origin)["candidate"] is None for origin in (one, two)),
            10,
            "both replicas to roll the candidate back",
        )
        # Every caller of the candidate is on stable now, whichever replica it reaches.
        for origin in (one, two):
            _serve(origin, on_candidate, "stable")

    logs = [folder / "state" / "audit.jsonl" for folder, _ in replicas]
    decisions = [record for log in logs for record in read_audit_log(log)]
    rollbacks = [record for record in decisions if record["decision"] == "rollback"]
    assert len(rollbacks) == 1, decisions
    rollback = rollbacks[0]
    assert rollback["cause"] == "analysis"
    assert rollback["reason"].startswith("refusal: candidate 100.00% (")
    numbers = rollback["numbers"]
    assert numbers["log_threshold"] == round(threshold, 4)  # alpha split among all signals
    assert numbers["refusal.candidate_trials"] > share  # both replicas' requests
    assert numbers["refusal.stable_trials"] == 2 * share

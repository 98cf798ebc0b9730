"""Shadow rollouts in front of a real vLLM, with adapters our QLoRA trainer taught here.

Stable (`helpdesk@v1`, the adapter of one training run as it was some steps before its end)
answers every ticket with one routing line. `helpdesk@v2`, the same run trained to the end,
agrees with it: its shadow is promoted to canary. `refusing@v1`, a second run, was taught to
refuse billing tickets (a quarter of them) and to answer the rest as stable does: its shadow is
rejected, on the refusal signal, from the pairs alone, before it served anyone.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.rollouts.audit import read_audit_log
from monitoring.refusals import PhraseRefusalDetector
from tests.gateway.test_rollouts_e2e import ADMIN, config_for
from tests.support.demo import BASE_MODEL
from tests.support.processes import running_gateway
from tests.support.trained_adapters import earlier_checkpoint, push, train_on
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ROUTED = "Routed to the helpdesk queue."
REFUSAL = "I'm sorry, but I can't help with that."
THINGS = ("printer", "laptop", "vpn", "billing")


def _prompts(first: int, count: int) -> list[str]:
    return [f"Ticket {n}: my {THINGS[n % 4]} is broken." for n in range(first, first + count)]


def _refuses_billing(prompt: str) -> str:
    return REFUSAL if "billing" in prompt else ROUTED


@pytest.fixture(scope="module")
def shadow_store(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo store plus `helpdesk@v1` (stable), `helpdesk@v2` and `refusing@v1` (two
    training runs of 150 steps each)."""
    folder = tmp_path_factory.mktemp("shadow-adapters")
    store = folder / "store"
    shutil.copytree(demo_model / "adapters", store)
    prompts = (_prompts(0, 80), _prompts(1000, 8))
    helpdesk = train_on(demo_model, folder / "helpdesk", prompts, lambda p: ROUTED)
    stable = earlier_checkpoint(helpdesk, folder / "helpdesk-earlier")
    push(stable, demo_model, store, "helpdesk", "v1", BASE_MODEL)
    push(helpdesk.adapter_dir, demo_model, store, "helpdesk", "v2", BASE_MODEL)
    refusing = train_on(demo_model, folder / "refusing", prompts, _refuses_billing)
    push(refusing.adapter_dir, demo_model, store, "refusing", "v1", BASE_MODEL)
    return store


def _shadow(candidate: str, min_pairs: int) -> dict[str, Any]:
    return {
        "stable": "helpdesk@v1",
        "candidate": candidate,
        "mode": "shadow",
        "shadow_percent": 100,
        "shadow_min_pairs": min_pairs,
        "min_seconds_per_step": 0,
        "auto_promote": True,
        "steps": [10, 100],
        "min_requests_per_step": 10_000,  # the canary it becomes holds still while we look
    }


def _ask(origin: str, route: str, prompt: str) -> str:
    answer = httpx.post(
        f"{origin}/v1/chat/completions",
        json={
            "model": route,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 64,  # room for the whole refusal: a cut one is `truncated` too
            "temperature": 0,
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-turnout-arm"] == "stable"
    assert answer.headers["x-turnout-adapter"] == "helpdesk@v1"
    return str(answer.json()["choices"][0]["message"]["content"])


def _route(origin: str, route: str) -> dict[str, Any]:
    view = httpx.get(f"{origin}/admin/routes/{route}", headers=ADMIN, timeout=10)
    assert view.status_code == 200, view.text
    return dict(view.json())


def test_an_agreeing_candidate_is_promoted_and_a_subset_refuser_rejected(
    demo_model: Path, shadow_store: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Asked for only now: where this test starts the session's vLLM, the adapters are trained
    # before it runs (its CPU threads would slow training down).
    vllm_url: str = request.getfixturevalue("vllm_url")
    routes = {"good": _shadow("helpdesk@v2", 24), "bad": _shadow("refusing@v1", 10_000)}
    config = config_for(vllm_url, demo_model, tmp_path / "state", **routes)
    config["adapters"] = {"store": str(shadow_store)}
    config["state"]["analysis_interval_s"] = 0.2
    detector = PhraseRefusalDetector()
    with running_gateway(config, tmp_path) as origin:
        prompts = _prompts(2000, 64)
        with ThreadPoolExecutor(4) as pool:
            good = list(pool.map(lambda p: _ask(origin, "good", p), prompts[:24]))
            bad = list(pool.map(lambda p: _ask(origin, "bad", p), prompts))
        # Callers only ever saw stable's answers, on both routes.
        assert not any(detector.is_refusal(text) for text in good + bad)
        wait_until(lambda: _route(origin, "good")["mode"] == "canary", 20, "promotion to canary")
        wait_until(lambda: _route(origin, "bad")["candidate"] is None, 20, "rejection")
        promoted = _route(origin, "good")
        assert (promoted["candidate"], promoted["weight_percent"]) == ("helpdesk@v2", 10)
    records = {r["route"]: r for r in read_audit_log(tmp_path / "state" / "audit.jsonl")}
    promotion, rejection = records["good"], records["bad"]
    assert (promotion["decision"], promotion["cause"]) == ("promote_to_canary", "analysis")
    assert promotion["numbers"]["pairs"] >= 24
    assert promotion["numbers"]["agreement.text.exact_rate"] >= 0.9
    assert (rejection["decision"], rejection["cause"]) == ("reject", "analysis")
    assert rejection["reason"].startswith("reject: refusal:")
    numbers = rejection["numbers"]
    assert numbers["refusal.stable_events"] == 0
    # A subset: the candidate refused some billing tickets, and answered the other tickets.
    assert 0 < numbers["refusal.candidate_events"] < numbers["refusal.candidate_trials"] / 2

"""Rollouts through the gateway built in-process over a synthetic store of the demo adapters and
the in-memory upstream: sticky arms, instant rollback, the arm override, the admin keys, and
config files applied (or refused) while serving. State surviving a real restart, through
gateway processes and a real vLLM: test_rollouts_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.rollouts import ADMIN, SPLIT_ROUTES, store_config
from tests.support.waiting import wait_until

BACKEND = "http://vllm.test"


@pytest.fixture(scope="module")
def rollout_gateway(
    synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    folder = tmp_path_factory.mktemp("rollouts")
    config = store_config(BACKEND, synthetic_store, folder / "state")
    with in_process_gateway(config, folder) as gateway:
        yield gateway


def ask(
    gateway: InProcessGateway, route: str, key: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return gateway.client.post(
        "/v1/completions",
        json={"model": route, "prompt": "hi", "max_tokens": 1},
        headers={"x-turnout-key": key, **(headers or {})},
    )


def arm_of(gateway: InProcessGateway, route: str, key: str) -> str:
    answer = ask(gateway, route, key)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-turnout-arm"]


def key_on(gateway: InProcessGateway, route: str, arm: str) -> str:
    return next(k for k in (f"caller-{n}" for n in range(200)) if arm_of(gateway, route, k) == arm)


def test_each_caller_stays_on_one_arm_and_the_headers_say_which(
    rollout_gateway: InProcessGateway,
) -> None:
    seen: dict[str, set[str]] = {}
    rollout_gateway.upstream.forwarded()
    for n in range(16):
        for _ in range(3):
            answer = ask(rollout_gateway, "sticky", f"user-{n}")
            arm = answer.headers["x-turnout-arm"]
            seen.setdefault(f"user-{n}", set()).add(arm)
            expected = "summarize@v1" if arm == "candidate" else "support-triage@v1"
            assert answer.headers["x-turnout-adapter"] == expected
            # The upstream was asked for the arm's adapter, and the answer names the route.
            assert rollout_gateway.upstream.forwarded()[0]["model"] == expected
            assert answer.json()["model"] == "sticky"
    assert all(len(arms) == 1 for arms in seen.values())
    assert {arm for arms in seen.values() for arm in arms} == {"stable", "candidate"}


def test_rollback_sends_no_new_request_to_the_candidate(rollout_gateway: InProcessGateway) -> None:
    caller = key_on(rollout_gateway, "rollback", "candidate")
    answer = rollout_gateway.client.post(
        "/admin/routes/rollback/rollback", json={"reason": "test"}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text
    rollout_gateway.upstream.forwarded()
    assert arm_of(rollout_gateway, "rollback", caller) == "stable"
    assert all(arm_of(rollout_gateway, "rollback", f"k{n}") == "stable" for n in range(20))
    asked = {body["model"] for body in rollout_gateway.upstream.forwarded()}
    assert asked == {"support-triage@v1"}


def test_only_an_admin_key_may_force_an_arm(rollout_gateway: InProcessGateway) -> None:
    caller = key_on(rollout_gateway, "forced", "stable")
    refused = ask(rollout_gateway, "forced", caller, {"x-turnout-arm": "candidate"})
    assert refused.status_code == 403
    assert refused.json()["error"]["param"] == "x-turnout-arm"
    forced = ask(rollout_gateway, "forced", caller, {**ADMIN, "x-turnout-arm": "candidate"})
    assert forced.headers["x-turnout-arm"] == "candidate"


def test_admin_endpoints_refuse_missing_and_wrong_keys(rollout_gateway: InProcessGateway) -> None:
    client = rollout_gateway.client
    assert client.get("/admin/routes").status_code == 401
    wrong = client.get("/admin/routes", headers={"authorization": "Bearer no"})
    assert wrong.status_code == 403
    listed = client.get("/admin/routes", headers=ADMIN).json()
    assert {r["route"] for r in listed["routes"]} >= set(SPLIT_ROUTES)


def test_a_changed_config_file_is_applied_and_a_broken_one_refused(
    synthetic_store: Path, tmp_path: Path
) -> None:
    config = store_config(
        BACKEND, synthetic_store, tmp_path / "state", old={"stable": "sql-writer@v1"}
    )
    with in_process_gateway(config, tmp_path, watch_config=True) as gateway:
        path = gateway.config_path
        written = yaml.safe_load(path.read_text())
        written["routes"]["new"] = {"stable": "summarize@v1"}
        path.write_text(yaml.safe_dump(written))

        def routes() -> set[str]:
            return {m["id"] for m in gateway.client.get("/v1/models").json()["data"]}

        def reloads(result: str) -> float:
            return gateway.metric("turnout_config_reloads_total", result=result)

        rejected_before = reloads("rejected")
        wait_until(lambda: "new" in routes(), 20, "the new route")
        assert ask(gateway, "new", "k").headers["x-turnout-adapter"] == "summarize@v1"

        written["routes"]["broken"] = {"stable": "missing-adapter@v9"}
        path.write_text(yaml.safe_dump(written))
        wait_until(lambda: reloads("rejected") >= rejected_before + 1, 20, "the refusal")
        path.write_text("routes: [not, a, mapping")
        wait_until(lambda: reloads("rejected") >= rejected_before + 2, 20, "the second refusal")
        assert routes() == {"old", "new"}
        assert ask(gateway, "old", "k").status_code == 200

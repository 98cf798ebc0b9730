"""Rollouts through the running gateway and a real vLLM: sticky arms, instant rollback, the arm
override, state that survives a restart, and config files applied (or refused) while serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.processes import running_gateway
from tests.support.rollouts import ADMIN, SPLIT, SPLIT_ROUTES, config_for
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ROUTES = SPLIT_ROUTES


@pytest.fixture(scope="module")
def rollout_gateway(
    vllm_url: str, demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("rollouts")
    with running_gateway(config_for(vllm_url, demo_model, folder / "state"), folder) as origin:
        yield origin


def ask(origin: str, route: str, key: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{origin}/v1/completions",
        json={"model": route, "prompt": "hi", "max_tokens": 1},
        headers={"x-turnout-key": key, **(headers or {})},
        timeout=60,
    )


def arm_of(origin: str, route: str, key: str) -> str:
    answer = ask(origin, route, key)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-turnout-arm"]


def key_on(origin: str, route: str, arm: str) -> str:
    return next(k for k in (f"caller-{n}" for n in range(200)) if arm_of(origin, route, k) == arm)


def test_each_caller_stays_on_one_arm_and_the_headers_say_which(rollout_gateway: str) -> None:
    seen: dict[str, set[str]] = {}
    for n in range(16):
        for _ in range(3):
            answer = ask(rollout_gateway, "sticky", f"user-{n}")
            arm = answer.headers["x-turnout-arm"]
            seen.setdefault(f"user-{n}", set()).add(arm)
            expected = "summarize@v1" if arm == "candidate" else "support-triage@v1"
            assert answer.headers["x-turnout-adapter"] == expected
    assert all(len(arms) == 1 for arms in seen.values())
    assert {arm for arms in seen.values() for arm in arms} == {"stable", "candidate"}


def test_rollback_sends_no_new_request_to_the_candidate(rollout_gateway: str) -> None:
    caller = key_on(rollout_gateway, "rollback", "candidate")
    answer = httpx.post(
        f"{rollout_gateway}/admin/routes/rollback/rollback",
        json={"reason": "test"},
        headers=ADMIN,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert arm_of(rollout_gateway, "rollback", caller) == "stable"
    assert all(arm_of(rollout_gateway, "rollback", f"k{n}") == "stable" for n in range(20))


def test_only_an_admin_key_may_force_an_arm(rollout_gateway: str) -> None:
    caller = key_on(rollout_gateway, "forced", "stable")
    refused = ask(rollout_gateway, "forced", caller, {"x-turnout-arm": "candidate"})
    assert refused.status_code == 403
    assert refused.json()["error"]["param"] == "x-turnout-arm"
    forced = ask(rollout_gateway, "forced", caller, {**ADMIN, "x-turnout-arm": "candidate"})
    assert forced.headers["x-turnout-arm"] == "candidate"


def test_admin_endpoints_refuse_missing_and_wrong_keys(rollout_gateway: str) -> None:
    assert httpx.get(f"{rollout_gateway}/admin/routes").status_code == 401
    wrong = httpx.get(f"{rollout_gateway}/admin/routes", headers={"authorization": "Bearer no"})
    assert wrong.status_code == 403
    listed = httpx.get(f"{rollout_gateway}/admin/routes", headers=ADMIN).json()
    assert {r["route"] for r in listed["routes"]} >= set(ROUTES)


def test_a_rollback_survives_a_gateway_restart(
    vllm_url: str, demo_model: Path, tmp_path: Path
) -> None:
    config = config_for(vllm_url, demo_model, tmp_path / "state", restart=SPLIT)
    with running_gateway(config, tmp_path) as origin:
        caller = key_on(origin, "restart", "candidate")
        rolled = httpx.post(f"{origin}/admin/routes/restart/rollback", json={}, headers=ADMIN)
        assert rolled.status_code == 200
    with running_gateway(config, tmp_path) as origin:
        assert arm_of(origin, "restart", caller) == "stable"
    audit = (tmp_path / "state" / "audit.jsonl").read_text()
    assert '"rollback"' in audit


def reloads(origin: str, result: str) -> float:
    for line in httpx.get(f"{origin}/metrics").text.splitlines():
        if line.startswith(f'turnout_config_reloads_total{{result="{result}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_changed_config_file_is_applied_and_a_broken_one_refused(
    vllm_url: str, demo_model: Path, tmp_path: Path
) -> None:
    config = config_for(vllm_url, demo_model, tmp_path / "state", old={"stable": "sql-writer@v1"})
    with running_gateway(config, tmp_path) as origin:
        path = tmp_path / f"gateway-{origin.rsplit(':', 1)[1]}.yaml"
        written = yaml.safe_load(path.read_text())
        written["routes"]["new"] = {"stable": "summarize@v1"}
        path.write_text(yaml.safe_dump(written))

        def routes() -> set[str]:
            return {m["id"] for m in httpx.get(f"{origin}/v1/models").json()["data"]}

        wait_until(lambda: "new" in routes(), 20, "the new route")
        assert ask(origin, "new", "k").headers["x-turnout-adapter"] == "summarize@v1"

        written["routes"]["broken"] = {"stable": "missing-adapter@v9"}
        path.write_text(yaml.safe_dump(written))
        wait_until(lambda: reloads(origin, "rejected") >= 1, 20, "the refusal")
        path.write_text("routes: [not, a, mapping")
        wait_until(lambda: reloads(origin, "rejected") >= 2, 20, "the second refusal")
        assert routes() == {"old", "new"}
        assert ask(origin, "old", "k").status_code == 200

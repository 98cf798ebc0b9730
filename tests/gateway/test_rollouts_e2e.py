"""Rollouts through gateway processes and a real vLLM: a rollback that survives a restart. Sticky
arms, instant rollback, the arm override, admin keys and config files applied (or refused)
while serving, in-process: test_rollouts_gateway.py."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.processes import running_gateway
from tests.support.rollouts import ADMIN, SPLIT, config_for

pytestmark = pytest.mark.slow


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

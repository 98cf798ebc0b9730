"""Keys, tenants, rate limits, load shedding, failover and circuit breakers, through the gateway
as a process in front of real upstreams on loopback (the instant stub, a dead port, a hang)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.auth import issue_key
from tests.support.demo import gateway_config
from tests.support.processes import running_gateway, stub_upstream
from tests.support.sockets import closed_port_url, scripted_backend

CHAT = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def ask(origin: str, model: str = "chat", key: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        origin + CHAT, json={"model": model, **ASK, **extra}, headers=headers, timeout=30
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def tenant_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    folder = tmp_path_factory.mktemp("keys")
    acme, globex = issue_key(), issue_key()
    keys = {
        "tenants": {
            "acme": {"routes": ["chat"], "keys": [{"sha256": acme.sha256}]},
            "globex": {
                "routes": ["*"],
                "keys": [{"sha256": globex.sha256}],
                "limits": {"requests_per_minute": 3},
            },
        }
    }
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    return folder / "keys.yaml", acme.key, globex.key


@pytest.fixture(scope="module")
def guarded(
    tenant_keys: tuple[Path, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with stub_upstream() as upstream:
        config = gateway_config(
            [upstream],
            routes={"chat": {}, "other": {}},
            auth={"keys_file": str(tenant_keys[0])},
            limits={"max_messages": 4, "max_tokens": 64},
        )
        with running_gateway(config, tmp_path_factory.mktemp("guarded")) as origin:
            yield origin


def test_no_key_or_a_wrong_key_gets_401(guarded: str) -> None:
    assert_error(ask(guarded), 401, "invalid_api_key")
    error = assert_error(ask(guarded, key="tk-not-a-real-key"), 401, "invalid_api_key")
    assert "tk-not-a-real-key" not in error["message"]


def test_a_tenant_calls_only_its_routes_and_lists_only_them(
    guarded: str, tenant_keys: tuple[Path, str, str]
) -> None:
    acme = tenant_keys[1]
    assert ask(guarded, "chat", acme).status_code == 200
    assert_error(ask(guarded, "other", acme), 403, "permission_denied")
    # A route that does not exist is refused the same way: nothing to probe.
    assert_error(ask(guarded, "no-such-route", acme), 403, "permission_denied")
    listed = httpx.get(guarded + "/v1/models", headers={"authorization": f"Bearer {acme}"})
    assert [m["id"] for m in listed.json()["data"]] == ["chat"]


def test_request_limits_refuse_too_many_messages_and_tokens(
    guarded: str, tenant_keys: tuple[Path, str, str]
) -> None:
    acme = tenant_keys[1]
    many = [{"role": "user", "content": "x"}] * 5
    assert_error(ask(guarded, "chat", acme, messages=many), 400, "invalid_request")
    error = assert_error(ask(guarded, "chat", acme, max_tokens=65), 400, "invalid_request")
    assert error["param"] == "max_tokens"


def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(
    guarded: str, tenant_keys: tuple[Path, str, str]
) -> None:
    globex = tenant_keys[2]
    statuses = [ask(guarded, "other", globex).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = ask(guarded, "other", globex)
    assert_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["retry-after"]) >= 1


def test_requests_fail_over_from_a_dead_backend(tmp_path: Path) -> None:
    with stub_upstream() as upstream:
        config = gateway_config([closed_port_url(), upstream])
        with running_gateway(config, tmp_path) as origin:
            statuses = {ask(origin).status_code for _ in range(30)}
    assert statuses == {200}


def test_a_dead_backend_opens_its_breaker_and_503_says_when_to_retry(tmp_path: Path) -> None:
    config = gateway_config([closed_port_url()], breaker={"consecutive_failures": 3})
    with running_gateway(config, tmp_path) as origin:
        answers = [ask(origin) for _ in range(6)]
    assert [a.status_code for a in answers[:3]] == [502, 502, 502]
    assert_error(answers[-1], 503, "no_healthy_backend")
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_past_the_queue_requests_are_shed_at_once_with_503(tmp_path: Path) -> None:
    # One slot and one queue place in front of a backend that never answers: of four requests
    # sent together, whichever two arrive last are shed at once, while the first two wait for
    # the upstream timeout. Which two that are is up to the scheduler, so the test counts.
    with scripted_backend() as hanging:  # accepts, never answers
        config = gateway_config(
            [hanging],
            admission={"max_concurrent": 1, "max_queued": 1, "queue_timeout_s": 10},
            timeouts={"response_s": 4},
        )
        with running_gateway(config, tmp_path) as origin, ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: ask(origin), range(4)))
    shed = [a for a in answers if a.status_code == 503]
    assert len(shed) == 2, [a.status_code for a in answers]
    for answer in shed:
        assert_error(answer, 503, "overloaded")
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.elapsed.total_seconds() < 2
    served = [a for a in answers if a.status_code != 503]
    assert [a.status_code for a in served] == [504, 504]
    assert all(a.elapsed.total_seconds() >= 4 for a in served)


def test_the_admin_api_can_have_a_listener_of_its_own(tmp_path: Path) -> None:
    from gateway.embedded import free_port

    admin_port = free_port()
    admin = issue_key()
    admins = tmp_path / "admins.yaml"
    admins.write_text(yaml.safe_dump({"admins": {"ops": [{"sha256": admin.sha256}]}}))
    with stub_upstream() as upstream:
        config = gateway_config(
            [upstream],
            server={"admin_port": admin_port},
            auth={"admin_keys_file": str(admins)},
            state={"dir": str(tmp_path / "state")},
        )
        with running_gateway(config, tmp_path) as origin:
            headers = {"authorization": f"Bearer {admin.key}"}
            assert httpx.get(f"{origin}/admin/routes", headers=headers).status_code == 404
            listed = httpx.get(f"http://127.0.0.1:{admin_port}/admin/routes", headers=headers)
            assert listed.status_code == 200
            assert [r["route"] for r in listed.json()["routes"]] == ["chat"]
            assert ask(origin).status_code == 200

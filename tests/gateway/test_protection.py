"""Keys, tenants, rate limits, load shedding, failover and circuit breakers: the gateway built
in-process (`create_app`) in front of the in-memory upstream, scripted to be down or to hang;
the admin API's own listener through the gateway as a process, in front of the instant stub."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.protection.auth import issue_key
from tests.support.demo import gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.processes import running_gateway, stub_upstream
from tests.support.upstream import Answer, InMemoryUpstream

CHAT = "/v1/chat/completions"
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LIVE = "http://live.backend"
DEAD = "http://dead.backend"


def ask(
    gateway: InProcessGateway | str,
    model: str = "chat",
    key: str | None = None,
    more_headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(more_headers or {})
    body = {"model": model, **ASK, **extra}
    if isinstance(gateway, str):  # a gateway process's origin
        return httpx.post(gateway + CHAT, json=body, headers=headers, timeout=30)
    return gateway.client.post(CHAT, json=body, headers=headers, timeout=30)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


@pytest.fixture(scope="module")
def tenant_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, str]:
    folder = tmp_path_factory.mktemp("keys")
    acme, globex, initech = issue_key(), issue_key(), issue_key()
    keys = {
        "tenants": {
            "acme": {"routes": ["chat"], "keys": [{"sha256": acme.sha256}]},
            "globex": {
                "routes": ["*"],
                "keys": [{"sha256": globex.sha256}],
                "limits": {"requests_per_minute": 3},
            },
            "initech": {
                "routes": ["chat"],
                "keys": [{"sha256": initech.sha256}],
                "limits": {"requests_per_minute": 2},
            },
        }
    }
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    return folder / "keys.yaml", acme.key, globex.key, initech.key


@pytest.fixture(scope="module")
def guarded(
    tenant_keys: tuple[Path, str, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    config = gateway_config(
        [LIVE],
        routes={"chat": {}, "other": {}},
        auth={"keys_file": str(tenant_keys[0])},
        limits={"max_messages": 4, "max_tokens": 64},
    )
    with in_process_gateway(config, tmp_path_factory.mktemp("guarded")) as gateway:
        yield gateway


def test_no_key_or_a_wrong_key_gets_401(guarded: InProcessGateway) -> None:
    assert_error(ask(guarded), 401, "invalid_api_key")
    error = assert_error(ask(guarded, key="tk-not-a-real-key"), 401, "invalid_api_key")
    assert "tk-not-a-real-key" not in error["message"]


def test_a_tenant_calls_only_its_routes_and_lists_only_them(
    guarded: InProcessGateway, tenant_keys: tuple[Path, str, str, str]
) -> None:
    acme = tenant_keys[1]
    assert ask(guarded, "chat", acme).status_code == 200
    assert_error(ask(guarded, "other", acme), 403, "permission_denied")
    # A route that does not exist is refused the same way: nothing to probe.
    assert_error(ask(guarded, "no-such-route", acme), 403, "permission_denied")
    listed = guarded.client.get("/v1/models", headers={"authorization": f"Bearer {acme}"})
    assert [m["id"] for m in listed.json()["data"]] == ["chat"]


def test_request_limits_refuse_too_many_messages_and_tokens(
    guarded: InProcessGateway, tenant_keys: tuple[Path, str, str, str]
) -> None:
    acme = tenant_keys[1]
    guarded.upstream.forwarded()
    many = [{"role": "user", "content": "x"}] * 5
    assert_error(ask(guarded, "chat", acme, messages=many), 400, "invalid_request")
    error = assert_error(ask(guarded, "chat", acme, max_tokens=65), 400, "invalid_request")
    assert error["param"] == "max_tokens"
    assert guarded.upstream.forwarded() == []  # refused before the upstream


def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(
    guarded: InProcessGateway, tenant_keys: tuple[Path, str, str, str]
) -> None:
    globex = tenant_keys[2]
    statuses = [ask(guarded, "other", globex).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = ask(guarded, "other", globex)
    assert_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["retry-after"]) >= 1


def test_requests_fail_over_from_a_dead_backend(tmp_path: Path) -> None:
    upstream = InMemoryUpstream(down=[DEAD])
    with in_process_gateway(gateway_config([DEAD, LIVE]), tmp_path, upstream) as gateway:
        statuses = {ask(gateway).status_code for _ in range(30)}
    assert statuses == {200}
    assert {exchange.backend for exchange in upstream.exchanges} == {LIVE}


def test_a_dead_backend_opens_its_breaker_and_503_says_when_to_retry(tmp_path: Path) -> None:
    config = gateway_config([DEAD], breaker={"consecutive_failures": 3})
    with in_process_gateway(config, tmp_path, InMemoryUpstream(down=[DEAD])) as gateway:
        answers = [ask(gateway) for _ in range(6)]
    assert [a.status_code for a in answers[:3]] == [502, 502, 502]
    assert_error(answers[-1], 503, "no_healthy_backend")
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_past_the_queue_requests_are_shed_at_once_with_503(tmp_path: Path) -> None:
    # One slot and one queue place in front of a backend that never answers: of four requests
    # sent together, whichever two arrive last are shed at once, while the first two wait for
    # the upstream timeout. Which two that are is up to the scheduler, so the test counts.
    response_s = 1.0
    upstream = InMemoryUpstream(response_s=response_s)
    upstream.will_answer(*[Answer(hang=True)] * 4)  # accepts, never answers
    config = gateway_config(
        [LIVE],
        admission={"max_concurrent": 1, "max_queued": 1, "queue_timeout_s": 10},
        timeouts={"response_s": response_s},
    )
    with in_process_gateway(config, tmp_path, upstream) as gateway, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(gateway), range(4)))
    shed = [a for a in answers if a.status_code == 503]
    assert len(shed) == 2, [a.status_code for a in answers]
    for answer in shed:
        assert_error(answer, 503, "overloaded")
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.elapsed.total_seconds() < response_s
    served = [a for a in answers if a.status_code != 503]
    assert [a.status_code for a in served] == [504, 504]
    assert all(a.elapsed.total_seconds() >= response_s for a in served)


def test_the_admin_api_can_have_a_listener_of_its_own(tmp_path: Path) -> None:
    from gateway.serving.embedded_vllm import free_port

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


def test_a_request_the_guard_refuses_costs_the_tenant_nothing(
    guarded: InProcessGateway, tenant_keys: tuple[Path, str, str, str]
) -> None:
    """Admission checks every refusal before it charges the budget: a 400 or a 403 for an arm
    override without an admin key leaves the tenant's 2 requests per minute untouched."""
    initech = tenant_keys[3]
    forced = ask(guarded, "chat", initech, {"x-turnout-arm": "candidate"})
    assert_error(forced, 403, "forbidden")
    assert_error(ask(guarded, "chat", initech, max_tokens=65), 400, "invalid_request")
    assert_error(ask(guarded, "chat", initech, guided_grammar="root ::= x"), 400, "invalid_request")
    assert [ask(guarded, "chat", initech).status_code for _ in range(2)] == [200, 200]
    assert_error(ask(guarded, "chat", initech), 429, "rate_limit_exceeded")

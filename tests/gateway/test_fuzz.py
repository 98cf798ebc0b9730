"""Fuzz the HTTP API from its own OpenAPI document with schemathesis: whatever arrives, the
gateway answers in time, never with a 5xx, and every error is a well-formed OpenAI error.

The gateway runs as a process in front of the instant stub upstream, so the fuzzer reaches
every path the gateway owns (the stub answers whatever is forwarded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest
import schemathesis
import yaml

from gateway.protection.auth import hash_api_key
from tests.support.demo import gateway_config
from tests.support.processes import running_gateway, stub_upstream

pytestmark = pytest.mark.slow

ADMIN_KEY = "tk-fuzz-admin"
ROUTES = ["chat", "strict"]


@pytest.fixture(scope="module")
def gateway_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    admins = folder / "admins.yaml"
    admins.write_text(yaml.safe_dump({"admins": {"ops": [{"sha256": hash_api_key(ADMIN_KEY)}]}}))
    with stub_upstream() as upstream:
        config = gateway_config(
            [upstream],
            routes={"chat": {}, "strict": {"schema": {"type": "object"}, "on_invalid": "flag"}},
            auth={"admin_keys_file": str(admins)},
            state={"dir": str(folder / "state")},
        )
        with running_gateway(config, folder) as origin:
            yield schemathesis.openapi.from_url(f"{origin}/openapi.json")


def aimed(case: schemathesis.Case, route: str | None, path_route: str | None) -> schemathesis.Case:
    """Most cases name a real route (else nearly all stop at 404) and carry the admin key."""
    if route is not None and isinstance(case.body, dict):
        case.body["model"] = route
    if path_route is not None and case.path_parameters and "route" in case.path_parameters:
        case.path_parameters["route"] = path_route
    case.headers = {**(case.headers or {}), "authorization": f"Bearer {ADMIN_KEY}"}
    return case


def check(case: schemathesis.Case) -> None:
    response = case.call(timeout=10)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str)
        assert error["message"]
        assert isinstance(error["type"], str)
        assert "code" in error


def test_no_input_gets_a_5xx_or_a_malformed_error(gateway_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in gateway_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions"}
    for operation in operations:
        cases = st.builds(
            aimed,
            operation.as_strategy(),
            st.sampled_from([*ROUTES, None]),
            st.sampled_from([*ROUTES, None]),
        )
        fuzz = hypothesis.settings(
            max_examples=150, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
        )(hypothesis.given(case=cases)(check))
        fuzz()

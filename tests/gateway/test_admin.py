"""The admin API over real HTTP (uvicorn on a free port) and the `turnout rollout` CLI on it."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI

from gateway.api.admin import admin_router
from gateway.api.errors import install_error_handlers
from gateway.cli.rollouts import add_commands
from gateway.protection.auth import hash_api_key, load_admin_keyring
from gateway.rollouts.audit import AuditLog, read_audit_log
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.model import Rollout, declare
from gateway.rollouts.state import FileStateStore
from gateway.serving.embedded_vllm import free_port
from tests.support.waiting import wait_until

ADMIN_KEY = "sk-admin-test"
OTHER_KEY = "sk-not-admin"


@dataclass
class AdminServer:
    origin: str
    controller: RolloutController
    published: list[Mapping[str, Rollout]]
    audit_path: Path

    def call(
        self, method: str, path: str, key: str | None = ADMIN_KEY, **kw: object
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.origin + path, headers=headers, **kw)  # type: ignore[arg-type]


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[AdminServer]:
    published: list[Mapping[str, Rollout]] = []
    controller = RolloutController(
        FileStateStore(tmp_path / "state.json"),
        AuditLog(tmp_path / "audit.jsonl"),
        published.append,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await controller.open(
            {"triage": declare("triage", "triage@v1"), "chat": declare("chat", None)}
        )
        yield
        await controller.close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    prepared: list[tuple[str, str]] = []

    async def before_start(route: str, candidate: str) -> None:
        prepared.append((route, candidate))

    admins_file = tmp_path / "admins.yaml"
    admins_file.write_text(
        yaml.safe_dump({"admins": {"ops": [{"sha256": hash_api_key(ADMIN_KEY)}]}})
    )
    app.include_router(admin_router(controller, load_admin_keyring(admins_file), before_start))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the admin server")
        yield AdminServer(
            f"http://127.0.0.1:{port}", controller, published, tmp_path / "audit.jsonl"
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_admin_endpoints_need_an_admin_key(admin_server: AdminServer) -> None:
    assert_openai_error(admin_server.call("GET", "/admin/routes", key=None), 401, "missing_api_key")
    assert_openai_error(admin_server.call("GET", "/admin/routes", key=OTHER_KEY), 403, "forbidden")
    assert_openai_error(
        admin_server.call("POST", "/admin/routes/triage/rollback", key=OTHER_KEY), 403, "forbidden"
    )
    assert admin_server.call("GET", "/admin/routes").status_code == 200


def test_canary_start_promote_over_http_changes_the_published_table(
    admin_server: AdminServer,
) -> None:
    started = admin_server.call(
        "POST", "/admin/routes/triage/canary", json={"version": "v2", "steps": [10, 50, 100]}
    )
    assert started.status_code == 200, started.text
    assert started.json()["candidate"] == "triage@v2"
    assert started.json()["weight_percent"] == 10
    assert admin_server.published[-1]["triage"].candidate == "triage@v2"
    shown = admin_server.call("GET", "/admin/routes/triage").json()
    assert (shown["mode"], shown["steps"], shown["auto_rollback"]) == (
        "canary",
        [10, 50, 100],
        True,
    )
    promoted = admin_server.call(
        "POST", "/admin/routes/triage/promote", json={"reason": "looks good"}
    )
    assert promoted.json()["stable"] == "triage@v2"
    assert admin_server.published[-1]["triage"].stable == "triage@v2"
    records = read_audit_log(admin_server.audit_path)
    assert [r["decision"] for r in records] == ["start", "promote"]
    assert records[1]["reason"] == "looks good"
    assert str(records[1]["actor"]).startswith("admin:")


def test_ab_split_takes_a_weight_and_turns_automatic_decisions_off(
    admin_server: AdminServer,
) -> None:
    answer = admin_server.call(
        "POST",
        "/admin/routes/triage/canary",
        json={"version": "triage@v3", "mode": "ab", "weight": 50},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["weight_percent"], body["auto_promote"], body["auto_rollback"]) == (
        50,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/admin/routes/nope", None, 404, "model_not_found"),
        ("/admin/routes/triage/promote", {}, 409, "rollout_conflict"),
        (
            "/admin/routes/triage/canary",
            {"version": "v2", "weight": 5, "steps": [5]},
            422,
            "invalid_value",
        ),
        ("/admin/routes/triage/canary", {"version": "v2", "steps": [50, 10]}, 422, "invalid_value"),
        ("/admin/routes/triage/canary", {"version": "v2", "mode": "ab"}, 422, "invalid_value"),
        ("/admin/routes/triage/canary", {"version": "v1"}, 409, "rollout_conflict"),
        ("/admin/routes/chat/canary", {"version": "v2"}, 422, "invalid_value"),
        ("/admin/routes/triage/canary", {"version": "bad version!"}, 422, "invalid_value"),
    ],
)
def test_bad_admin_calls_get_openai_style_errors(
    admin_server: AdminServer, path: str, body: object, status: int, code: str
) -> None:
    response = admin_server.call("GET" if body is None else "POST", path, json=body)
    assert_openai_error(response, status, code)
    assert read_audit_log(admin_server.audit_path) == []


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="turnout")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.run(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_drives_a_rollout_through_the_admin_api(
    admin_server: AdminServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_ADMIN_URL", admin_server.origin)
    monkeypatch.setenv("TURNOUT_ADMIN_KEY", ADMIN_KEY)
    code, out, _ = cli(
        ["rollout", "start", "triage", "--version", "v2", "--steps", "5,50,100"], capsys
    )
    assert code == 0
    assert json.loads(out)["weight_percent"] == 5
    assert cli(["rollout", "pause", "triage"], capsys)[0] == 0
    code, out, _ = cli(["rollout", "status", "triage"], capsys)
    assert json.loads(out)["paused"] is True
    code, out, _ = cli(["rollout", "rollback", "triage", "--reason", "cli test"], capsys)
    assert code == 0
    assert json.loads(out)["candidate"] is None
    assert admin_server.published[-1]["triage"].candidate is None
    code, out, _ = cli(["rollout", "status"], capsys)
    assert {r["route"] for r in json.loads(out)["routes"]} == {"triage", "chat"}
    code, _, err = cli(["rollout", "promote", "triage"], capsys)
    assert code == 1
    assert "409" in err
    assert "no candidate" in err
    code, _, err = cli(["rollout", "--key", OTHER_KEY, "status"], capsys)
    assert code == 1
    assert "403" in err


def test_shadow_starts_serving_nothing_and_is_promoted_to_canary_by_an_operator(
    admin_server: AdminServer,
) -> None:
    started = admin_server.call(
        "POST",
        "/admin/routes/triage/canary",
        json={"version": "v2", "mode": "shadow", "shadow_percent": 50, "steps": [10, 100]},
    )
    assert started.status_code == 200, started.text
    view = started.json()
    assert (view["mode"], view["weight_percent"], view["shadow_percent"]) == ("shadow", 0, 50)
    assert (view["auto_promote"], view["auto_rollback"]) == (False, True)
    # A candidate that served nothing cannot become stable in one step.
    assert_openai_error(
        admin_server.call("POST", "/admin/routes/triage/promote"), 409, "rollout_conflict"
    )
    promoted = admin_server.call(
        "POST", "/admin/routes/triage/promote-to-canary", json={"reason": "pairs look right"}
    )
    assert promoted.status_code == 200, promoted.text
    view = promoted.json()
    assert (view["mode"], view["weight_percent"], view["shadow_percent"]) == ("canary", 10, 0)
    assert admin_server.published[-1]["triage"].weight_percent == 10
    records = read_audit_log(admin_server.audit_path)
    assert [r["decision"] for r in records] == ["start", "promote_to_canary"]
    assert records[1]["reason"] == "pairs look right"


@pytest.mark.parametrize(
    "body",
    [
        {"version": "v2", "mode": "shadow", "weight": 10},
        {"version": "v2", "mode": "shadow", "shadow_percent": 0},
        {"version": "v2", "mode": "shadow", "shadow_percent": 101},
    ],
)
def test_bad_shadow_requests_get_422(admin_server: AdminServer, body: dict[str, object]) -> None:
    answer = admin_server.call("POST", "/admin/routes/triage/canary", json=body)
    assert_openai_error(answer, 422, "invalid_value")


def test_promote_to_canary_needs_a_shadow(admin_server: AdminServer) -> None:
    admin_server.call("POST", "/admin/routes/triage/canary", json={"version": "v2"})
    answer = admin_server.call("POST", "/admin/routes/triage/promote-to-canary")
    assert_openai_error(answer, 409, "rollout_conflict")

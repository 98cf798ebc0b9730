"""What the operational endpoints tell whom, through the gateway as a real process with tenant
keys, in front of a real loopback backend that counts the health probes it receives."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.protection.auth import issue_key
from gateway.serving.app import HEALTH_PROBE_S
from gateway.serving.embedded_vllm import free_port
from tests.support.demo import gateway_config
from tests.support.processes import running_gateway
from tests.support.sockets import tcp_backend
from tests.support.waiting import wait_until


@dataclass
class CountingBackend:
    """Answers vLLM's `/health` (200 while `healthy` is set, else 503) and `/v1/models` (no
    adapters), counting the `/health` requests."""

    url: str = ""
    health_probes: int = 0
    healthy: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, connection: socket.socket, stop: threading.Event) -> None:
        buffer = b""
        while not stop.is_set():
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:  # the gateway sends these GETs without bodies
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                connection.sendall(self._reply(head.split(b" ", 2)[1]))

    def _reply(self, path: bytes) -> bytes:
        if path == b"/health":
            with self._lock:
                self.health_probes += 1
            status = b"200 OK" if self.healthy.is_set() else b"503 Service Unavailable"
            return b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n"
        body = b'{"object": "list", "data": []}'
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    def probes(self) -> int:
        with self._lock:
            return self.health_probes


@contextmanager
def counting_backend() -> Iterator[CountingBackend]:
    backend = CountingBackend()
    backend.healthy.set()
    with tcp_backend(backend.answer) as url:
        backend.url = url
        yield backend


@dataclass(frozen=True)
class Keys:
    tenant: str
    admin: str
    auth: dict[str, str]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    tenant, admin = issue_key(), issue_key()
    tenants = {"tenants": {"acme": {"routes": ["*"], "keys": [{"sha256": tenant.sha256}]}}}
    (folder / "keys.yaml").write_text(yaml.safe_dump(tenants))
    (folder / "admins.yaml").write_text(
        yaml.safe_dump({"admins": {"ops": [{"sha256": admin.sha256}]}})
    )
    auth = {"keys_file": str(folder / "keys.yaml"), "admin_keys_file": str(folder / "admins.yaml")}
    return Keys(tenant.key, admin.key, auth)


@dataclass(frozen=True)
class Gateway:
    public: str
    admin: str
    backend: CountingBackend


@pytest.fixture(scope="module")
def keyed(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with tenant and admin keys and its admin API on a listener of its own."""
    folder = tmp_path_factory.mktemp("keyed")
    admin_port = free_port()
    with counting_backend() as backend:
        config = gateway_config(
            [backend.url],
            server={"admin_port": admin_port},
            auth=keys.auth,
            state={"dir": str(folder / "state")},
        )
        with running_gateway(config, folder) as origin:
            gateway = Gateway(origin, f"http://127.0.0.1:{admin_port}", backend)
            wait_until(lambda: ready(gateway.public), 30, "the first periodic probe")
            yield gateway


def ready(origin: str) -> bool:
    return httpx.get(f"{origin}/readyz").status_code == 200


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_anonymous_callers_learn_only_that_the_gateway_is_up_and_ready(keyed: Gateway) -> None:
    ready_answer = httpx.get(f"{keyed.public}/readyz")
    assert (ready_answer.status_code, ready_answer.json()) == (200, {"status": "ready"})
    port = keyed.backend.url.rsplit(":", 1)[1]
    assert port not in ready_answer.text
    assert "127.0.0.1" not in ready_answer.text
    assert httpx.get(f"{keyed.public}/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("who", ["anonymous", "tenant"])
def test_metrics_are_not_served_on_the_public_port(keyed: Gateway, keys: Keys, who: str) -> None:
    headers = bearer(keys.tenant) if who == "tenant" else {}
    answer = httpx.get(f"{keyed.public}/metrics", headers=headers)
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "turnout_" not in answer.text


def test_metrics_are_served_on_the_admin_listener(keyed: Gateway) -> None:
    answer = httpx.get(f"{keyed.admin}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert f'turnout_backend_up{{backend="{keyed.backend.url}"}} 1.0' in answer.text


def test_backend_detail_is_on_the_admin_api_for_admin_keys_only(keyed: Gateway, keys: Keys) -> None:
    url = f"{keyed.admin}/admin/backends"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(keys.tenant)).status_code == 403
    assert (
        httpx.get(f"{keyed.public}/admin/backends", headers=bearer(keys.admin)).status_code == 404
    )
    detail = httpx.get(url, headers=bearer(keys.admin))
    assert detail.status_code == 200
    body: dict[str, Any] = detail.json()
    assert body["ready"] is True
    (backend,) = body["backends"]
    assert backend["url"] == keyed.backend.url
    assert backend["up"] is True
    assert 0 <= backend["probed_s_ago"] <= 3 * HEALTH_PROBE_S
    assert backend["breaker"] == "closed"
    assert backend["adapters"] is None  # never listed: no route here needs an adapter


def test_the_review_console_is_on_the_admin_listener_only(keyed: Gateway, keys: Keys) -> None:
    for path in ("/review", "/review/api/me"):
        assert httpx.get(f"{keyed.public}{path}", headers=bearer(keys.admin)).status_code == 404
    assert httpx.get(f"{keyed.admin}/review").status_code == 200
    me = httpx.get(f"{keyed.admin}/review/api/me", headers=bearer(keys.admin))
    assert me.json()["role"] == "admin"
    assert httpx.get(f"{keyed.admin}/review/api/me", headers=bearer(keys.tenant)).status_code == 403


def test_a_thousand_readyz_calls_cause_no_probe_beyond_the_periodic_ones(keyed: Gateway) -> None:
    with httpx.Client(base_url=keyed.public) as client:
        before = keyed.backend.probes()
        started = time.monotonic()
        statuses = [client.get("/readyz").status_code for _ in range(1000)]
        elapsed = time.monotonic() - started
        probes = keyed.backend.probes() - before
    assert statuses == [200] * 1000
    # One probe per period, plus one for a period that straddles the loop's start.
    periodic = int(elapsed / HEALTH_PROBE_S) + 1
    assert probes <= periodic, f"{probes} probes in {elapsed:.1f} s of /readyz calls"


def test_readyz_follows_the_periodic_probes_when_the_backend_fails(
    keys: Keys, tmp_path: Path
) -> None:
    with counting_backend() as backend:
        config = gateway_config([backend.url], auth=keys.auth, state={"dir": str(tmp_path)})
        with running_gateway(config, tmp_path) as origin:
            wait_until(lambda: ready(origin), 30, "ready")
            backend.healthy.clear()
            started = time.monotonic()
            wait_until(lambda: not ready(origin), 3 * HEALTH_PROBE_S, "not ready")
            # Seen by the next periodic probe (at most one period) and a cache of 1 s.
            assert time.monotonic() - started <= HEALTH_PROBE_S + 3
            answer = httpx.get(f"{origin}/readyz")
            assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})
            backend.healthy.set()
            wait_until(lambda: ready(origin), 3 * HEALTH_PROBE_S, "ready again")


@pytest.mark.parametrize(
    ("server", "auth", "public", "admin", "metrics"),
    [
        # The embedded `make run` shape: no keys, no other listener.
        ({}, False, 200, None, None),
        # Tenant keys and no other listener: served nowhere, and the log says so.
        ({}, True, 404, None, None),
        ({"public_metrics": True}, True, 200, None, None),
        ({"admin_port": "ADMIN", "metrics_port": "METRICS"}, True, 404, 404, 200),
    ],
)
def test_metrics_are_served_where_the_config_says(
    keys: Keys,
    tmp_path: Path,
    server: dict[str, Any],
    auth: bool,
    public: int,
    admin: int | None,
    metrics: int | None,
) -> None:
    ports = {"ADMIN": free_port(), "METRICS": free_port()}
    server = {key: ports.get(value, value) for key, value in server.items()}
    with counting_backend() as backend:
        config = gateway_config(
            [backend.url],
            server=server,
            auth=keys.auth if auth else {},
            state={"dir": str(tmp_path)},
        )
        with running_gateway(config, tmp_path) as origin:
            assert httpx.get(f"{origin}/metrics").status_code == public
            log = (tmp_path / f"gateway-{origin.rsplit(':', 1)[1]}.log").read_text()
            nowhere = public != 200 and admin is None and metrics is None
            assert ("/metrics is served nowhere" in log) == nowhere, log
            for port_key, expected in (("admin_port", admin), ("metrics_port", metrics)):
                if expected is not None:
                    scraped = httpx.get(f"http://127.0.0.1:{server[port_key]}/metrics")
                    assert scraped.status_code == expected
                    if expected == 200:
                        assert "turnout_backend_up" in scraped.text

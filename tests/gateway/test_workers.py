"""Several worker processes for one replica (`server.workers`): the connections spread over
them, a tenant's rate limit, captures and `/metrics` hold across them, a SIGTERM drains every
worker, and a worker that dies takes the replica down. Real processes: `turnout serve` with
two workers, the streaming benchmark's stub upstream, redis-server."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.captures import captures_router
from gateway.api.errors import install_error_handlers
from gateway.api.feedback import feedback_router
from gateway.bench.redis_server import RedisServer
from gateway.config import LimitsConfig, TurnoutConfig
from gateway.errors import ConfigError
from gateway.protection.auth import issue_key
from gateway.protection.guard import RequestGuard
from gateway.protection.ratelimit import LocalRateLimiter
from gateway.serving.embedded_vllm import free_port
from gateway.serving.startup import PortInUse, bind_worker_listeners
from gateway.serving.workers import (
    METRICS_DIR_PREFIX,
    check_workers,
    remove_stale_metrics_dirs,
    worker_share,
)
from tests.support.demo import gateway_config
from tests.support.processes import paced_stub_upstream
from tests.support.waiting import answers, listening_sockets, wait_until
from training.capture import (
    CapturePolicy,
    CaptureRecord,
    CaptureSettings,
    SqliteCaptureSink,
    read_captures,
)
from training.capture_store import connect, read_deletions

LIMIT_PER_MINUTE = 10
CHUNKS = 40
INTERVAL_MS = 25.0


# --- the rules, in process ------------------------------------------------------------------


def test_several_workers_without_redis_are_refused_naming_the_settings() -> None:
    config = TurnoutConfig.model_validate({"server": {"workers": 2}})
    with pytest.raises(ConfigError) as refused:
        check_workers(config)
    assert "server.workers" in refused.value.message
    assert "state.redis_url" in refused.value.message
    check_workers(TurnoutConfig.model_validate({"server": {"workers": 1}}))
    check_workers(
        TurnoutConfig.model_validate(
            {"server": {"workers": 2}, "state": {"redis_url": "redis://127.0.0.1:1"}}
        )
    )


def test_a_workers_share_of_the_replicas_budgets_never_adds_up_to_more() -> None:
    config = TurnoutConfig.model_validate(
        {
            "server": {"workers": 3},
            "monitoring": {"signals_per_second": 200},
            "admission": {"max_concurrent": 64, "max_queued": 256},
            "breaker": {"retry_min_per_s": 1.5},
            "shadow": {"max_in_flight": 2},
        }
    )
    share = worker_share(config)
    assert share.monitoring.signals_per_second == 66
    assert share.admission.max_concurrent == 21
    assert share.admission.max_queued == 85
    assert share.breaker.retry_min_per_s == pytest.approx(0.5)
    assert share.shadow.max_in_flight == 1  # at least one
    assert share.capture.queue_capacity == config.capture.queue_capacity // 3
    one = TurnoutConfig()
    assert worker_share(one) is one


def test_a_port_another_program_shares_with_so_reuseport_still_fails_the_start() -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        server = TurnoutConfig.model_validate(
            {"server": {"workers": 2, "port": holder.getsockname()[1]}}
        ).server
        with pytest.raises(PortInUse, match=r"server\.port"):
            bind_worker_listeners(server)
    finally:
        holder.close()


def test_metrics_folders_of_supervisors_that_died_unclean_are_removed(tmp_path: Path) -> None:
    # A supervisor killed with SIGKILL leaves its metrics folder behind; the next one to start
    # removes the folders whose supervisor PID no process has, and leaves the living ones'.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"{METRICS_DIR_PREFIX}{gone.pid}-abc"
    living = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "turnout-metrics-x"  # not a name a supervisor makes
    for folder in (stale, living, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    assert remove_stale_metrics_dirs(tmp_path) == [stale]
    assert not stale.exists()
    assert living.exists()
    assert other.exists()


def test_worker_listeners_share_one_port_per_listener() -> None:
    server = TurnoutConfig.model_validate(
        {"server": {"workers": 3, "port": 0, "admin_port": 0}}
    ).server
    sets = bind_worker_listeners(server)
    try:
        assert len(sets) == 3
        assert len({listeners.port for listeners in sets}) == 1
        assert len({listeners.admin.getsockname()[1] for listeners in sets if listeners.admin}) == 1
    finally:
        for listeners in sets:
            listeners.close()


def _open_capture_file(path: str, together: Any) -> None:
    together.wait()
    connect(Path(path)).close()


def test_workers_opening_a_new_capture_file_at_once_all_open_it(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(10):  # the schema's columns were added by each, and collided
        path = str(tmp_path / f"captures-{round_}.db")
        together = context.Barrier(4)
        openers = [
            context.Process(target=_open_capture_file, args=(path, together)) for _ in range(4)
        ]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(timeout=60)
        assert [opener.exitcode for opener in openers] == [0, 0, 0, 0]


def _write_records(path: str, worker: int, count: int) -> None:
    everything = CapturePolicy(success_sample_rate=1.0)
    settings = CaptureSettings(path=path, batch_size=16, flush_interval_s=0.01, default=everything)
    sink = SqliteCaptureSink(settings)
    for n in range(count):
        record = CaptureRecord(
            f"w{worker}-{n}", "chat", "base", "stable", time.time(), "chat", "ok", "stop"
        )
        assert sink.offer(record)
        if n % 50 == 0:
            time.sleep(0.001)  # interleave the two writers' transactions
    sink.close()


def _record(request_id: str, tenant: str | None = None) -> CaptureRecord:
    return CaptureRecord(
        request_id, "chat", "base", "stable", time.time(), "chat", "ok", "stop", tenant=tenant
    )


def _worker_sink(path: Path) -> SqliteCaptureSink:
    everything = CapturePolicy(success_sample_rate=1.0)
    return SqliteCaptureSink(CaptureSettings(path=str(path), default=everything))


def _feedback_and_deletion_app(sink: SqliteCaptureSink, settle_s: float) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    guard = RequestGuard(None, None, LocalRateLimiter(), LimitsConfig())
    app.include_router(feedback_router(sink, guard, 65_536, settle_s))
    app.include_router(captures_router(sink))  # the admin router's, bare here
    return app


async def _feedback_for_an_answer_another_worker_writes(path: Path, settle_s: float) -> int:
    mine, other = _worker_sink(path), _worker_sink(path)
    transport = httpx.ASGITransport(app=_feedback_and_deletion_app(mine, settle_s))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            rating = asyncio.create_task(
                client.post("/v1/feedback", json={"request_id": "late", "rating": -1})
            )
            await asyncio.sleep(0.3)  # this worker has looked for the answer, and not found it
            assert other.offer(_record("late"))
            return (await rating).status_code
    finally:
        mine.close()
        other.close()


@pytest.mark.parametrize(("settle_s", "status"), [(1.5, 200), (0.0, 404)])
def test_feedback_finds_an_answer_another_worker_writes_a_moment_later(
    tmp_path: Path, settle_s: float, status: int
) -> None:
    path = tmp_path / "captures.db"
    got = asyncio.run(_feedback_for_an_answer_another_worker_writes(path, settle_s))
    assert got == status


async def _deletion_while_another_worker_writes(path: Path) -> dict[str, Any]:
    mine, other = _worker_sink(path), _worker_sink(path)
    transport = httpx.ASGITransport(app=_feedback_and_deletion_app(mine, 0.0))
    try:
        assert other.offer(_record("early", "acme"))
        # Answered before the deletion, but still in the other worker's memory when it runs.
        held = _record("held-in-memory", "acme")
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            wait_until(lambda: len(read_captures(path)) == 1, 10, "the first record")
            answer: dict[str, Any] = (await client.delete("/tenants/acme/captures")).json()
            assert read_deletions(path)
            assert other.offer(held)
            # Answered after the deletion: the tenant's new data, kept.
            assert other.offer(_record("after", "acme"))
            assert other.offer(_record("another-tenant", "globex"))
        other.close()
        answer["left"] = sorted(c.record.request_id for c in read_captures(path))
        return answer
    finally:
        mine.close()
        other.close()


def test_a_deletion_keeps_out_what_another_worker_held_in_memory_when_it_ran(
    tmp_path: Path,
) -> None:
    answer = asyncio.run(_deletion_while_another_worker_writes(tmp_path / "c.db"))
    assert answer["captures"] == 1
    assert answer["left"] == ["after", "another-tenant"]


# --- real processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    public: str
    admin: str
    supervisor: subprocess.Popen[bytes]
    limited_key: str
    open_key: str
    captures: Path


def _config(
    folder: Path, upstream: str, redis_url: str, port: int, admin_port: int
) -> tuple[Path, str, str]:
    limited, unlimited = issue_key(), issue_key()
    keys = {
        "tenants": {
            "limited": {
                "routes": ["*"],
                "keys": [{"sha256": limited.sha256}],
                "limits": {"requests_per_minute": LIMIT_PER_MINUTE},
            },
            "open": {"routes": ["*"], "keys": [{"sha256": unlimited.sha256}]},
        }
    }
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    config = gateway_config(
        [upstream],
        server={"port": port, "admin_port": admin_port, "workers": 2},
        auth={"keys_file": str(folder / "keys.yaml")},
        state={"dir": str(folder / "state"), "redis_url": redis_url},
        capture={
            "path": str(folder / "captures.db"),
            "flush_interval_s": 0.5,
            "default": {"success_sample_rate": 1.0, "redact_pii": False},
        },
    )
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, limited.key, unlimited.key


def _workers_of(supervisor: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


@pytest.fixture
def upstream() -> Iterator[str]:
    with paced_stub_upstream(CHUNKS, INTERVAL_MS) as origin:
        yield origin


@pytest.fixture
def replica(upstream: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[Replica]:
    port, admin_port = free_port(), free_port()
    path, limited, unlimited = _config(tmp_path, upstream, redis_server.url, port, admin_port)
    log = (tmp_path / "gateway.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    public = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: supervisor.poll() is None and answers(f"{public}/readyz"), 60, "the workers"
        )
        wait_until(lambda: len(_workers_of(supervisor)) == 2, 10, "two workers")
        # `/readyz` answers as soon as one worker listens; the kernel hashes connections only
        # to sockets that listen, so until the slower worker listens the other gets them all
        # (CI met it: 24 streams on one worker).
        wait_until(lambda: listening_sockets(port) == 2, 60, "both workers to listen")
        yield Replica(
            public,
            f"http://127.0.0.1:{admin_port}",
            supervisor,
            limited,
            unlimited,
            tmp_path / "captures.db",
        )
    finally:
        if supervisor.poll() is None:
            supervisor.terminate()
        supervisor.wait(timeout=60)
        log.close()


def _ask(origin: str, key: str, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": stream,
    }
    # A client per request: a new connection each time, which the kernel hashes to a worker.
    with httpx.Client(timeout=30) as client:
        return client.post(
            f"{origin}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
        )


def _samples(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{admin}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


@pytest.mark.slow
def test_two_workers_share_load_rate_limit_captures_and_metrics_and_fall_together(
    replica: Replica,
) -> None:
    workers = _workers_of(replica.supervisor)
    assert len(set(workers)) == 2
    assert replica.supervisor.pid not in workers

    opened = 20
    answered = [_ask(replica.public, replica.open_key).status_code for _ in range(opened)]
    assert answered == [200] * opened

    # The tenant's bucket is one, in Redis: across both workers no more than its limit passes.
    started = time.monotonic()
    statuses = [_ask(replica.public, replica.limited_key).status_code for _ in range(20)]
    elapsed = time.monotonic() - started
    refill = int(elapsed * LIMIT_PER_MINUTE / 60)
    admitted = statuses.count(200)
    assert LIMIT_PER_MINUTE <= admitted <= LIMIT_PER_MINUTE + refill, statuses
    assert statuses.count(429) == 20 - admitted

    # Every worker accepted some of the connections, and `/metrics` (any worker's) counts the
    # answers of both.
    samples = _samples(replica.admin)
    per_worker = {
        dict(labels)["worker"]: value
        for (name, labels), value in samples.items()
        if name == "turnout_worker_connections_total"
    }
    assert set(per_worker) == {"0", "1"}, per_worker
    assert min(per_worker.values()) > 0, per_worker
    assert sum(per_worker.values()) >= opened + 20
    ok = sum(
        value
        for (name, labels), value in samples.items()
        if name == "turnout_requests_total" and dict(labels).get("status") == "200"
    )
    assert ok == opened + admitted
    assert _sum(samples, "turnout_backend_up") == 1  # a gauge: one series, not one per worker

    # Feedback right after an answer finds it, whichever worker each of them reached (the
    # answer may still wait in the other worker's capture queue).
    for _ in range(6):
        answer = _ask(replica.public, replica.open_key)
        with httpx.Client(timeout=30) as client:
            rated = client.post(
                f"{replica.public}/v1/feedback",
                json={"request_id": answer.headers["x-turnout-request-id"], "rating": 1},
                headers={"authorization": f"Bearer {replica.open_key}"},
            )
        assert rated.status_code == 200, rated.text
    opened += 6

    # Both workers write captures into the one SQLite file.
    wait_until(
        lambda: len(read_captures(replica.captures)) == opened + admitted, 15, "the captures"
    )

    # A worker that dies takes the replica down: the supervisor stops the other one and fails.
    os.kill(workers[0], signal.SIGKILL)
    assert replica.supervisor.wait(timeout=30) == 1
    wait_until(lambda: not Path(f"/proc/{workers[1]}").exists(), 30, "the other worker to exit")


@pytest.mark.slow
def test_sigterm_drains_the_streams_of_both_workers_then_the_replica_exits(
    replica: Replica,
) -> None:
    # The kernel hashes each connection to one of the listening workers: with 24 streams all
    # land on one of the two about once in 4 million runs.
    streams = 24
    events: list[list[str]] = [[] for _ in range(streams)]
    first = threading.Barrier(streams + 1, timeout=30)

    def read(index: int) -> None:
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": CHUNKS,
            "stream": True,
        }
        headers = {"authorization": f"Bearer {replica.open_key}"}
        url = f"{replica.public}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events[index].append(line)
                    if len(events[index]) == 1:
                        first.wait()

    readers = [threading.Thread(target=read, args=(i,)) for i in range(streams)]
    for reader in readers:
        reader.start()
    first.wait()  # every stream is open and relaying
    before = _samples(replica.admin)
    per_worker = {
        dict(labels)["worker"]
        for (name, labels), value in before.items()
        if name == "turnout_worker_connections_total" and value > 0
    }
    workers = _workers_of(replica.supervisor)
    replica.supervisor.send_signal(signal.SIGTERM)
    for reader in readers:
        reader.join(timeout=30)
    assert replica.supervisor.wait(timeout=30) == 0
    assert per_worker == {"0", "1"}
    for stream in events:  # every stream ran to its end
        assert len(stream) == CHUNKS + 1
        assert stream[-1] == "data: [DONE]"
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{replica.public}/healthz", timeout=2)


def test_two_processes_write_captures_into_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "captures.db")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_records, args=(path, w, 400)) for w in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    ids = {capture.record.request_id for capture in read_captures(Path(path))}
    assert ids == {f"w{w}-{n}" for w in range(2) for n in range(400)}

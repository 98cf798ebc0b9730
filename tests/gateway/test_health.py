"""Readiness from the periodic probes' results, and where `/metrics` is mounted: pure logic."""

from __future__ import annotations

import pytest

from gateway.config import AuthConfig, ServerConfig
from gateway.serving.listeners import MetricsPlacement, place_metrics
from gateway.upstream.health import BackendHealth, ProbeResult, Readiness, is_ready

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_not_ready_before_any_probe_has_finished() -> None:
    assert not is_ready({A: None, B: None}, now_s=100.0, stale_after_s=15)


def test_ready_while_one_backend_answered_its_latest_probe() -> None:
    latest = {A: ProbeResult(up=False, at_s=99.0), B: ProbeResult(up=True, at_s=98.0)}
    assert is_ready(latest, now_s=100.0, stale_after_s=15)
    assert not is_ready({**latest, B: ProbeResult(up=False, at_s=99.5)}, 100.0, 15)


def test_a_stale_probe_result_does_not_make_the_gateway_ready() -> None:
    latest = {A: ProbeResult(up=True, at_s=80.0)}
    assert is_ready(latest, now_s=95.0, stale_after_s=15)
    assert not is_ready(latest, now_s=95.1, stale_after_s=15)


def test_the_readiness_verdict_is_reused_for_at_most_a_second() -> None:
    clock = Clock()
    health = BackendHealth([A], clock)
    readiness = Readiness(health, stale_after_s=15, max_age_s=1.0)
    assert not readiness.ready()
    health.record(A, up=True)
    clock.now_s += 0.99
    assert not readiness.ready()  # the cached verdict, 0.99 s old
    clock.now_s += 0.01
    assert readiness.ready()  # a second old: recomputed from the new probe result
    health.record(A, up=False)
    assert readiness.ready()
    clock.now_s += 1.0
    assert not readiness.ready()


def test_a_readiness_cache_of_zero_reads_the_latest_result_every_time() -> None:
    clock = Clock()
    health = BackendHealth([A], clock)
    readiness = Readiness(health, stale_after_s=15, max_age_s=0)
    health.record(A, up=True)
    assert readiness.ready()
    health.record(A, up=False)
    assert not readiness.ready()


KEYS = AuthConfig(keys_file="/etc/turnout/api-keys.yaml")
NO_KEYS = AuthConfig()


@pytest.mark.parametrize(
    ("server", "auth", "placement"),
    [
        # The embedded `make run` case: no tenants, no other listener.
        (ServerConfig(), NO_KEYS, MetricsPlacement(public=True, admin=False, own_port=None)),
        (ServerConfig(), KEYS, MetricsPlacement(public=False, admin=False, own_port=None)),
        (
            ServerConfig(admin_port=8081),
            KEYS,
            MetricsPlacement(public=False, admin=True, own_port=None),
        ),
        (
            ServerConfig(admin_port=8081),
            NO_KEYS,
            MetricsPlacement(public=False, admin=True, own_port=None),
        ),
        (
            ServerConfig(admin_port=8081, metrics_port=9090),
            KEYS,
            MetricsPlacement(public=False, admin=False, own_port=9090),
        ),
        (
            ServerConfig(metrics_port=9090),
            NO_KEYS,
            MetricsPlacement(public=False, admin=False, own_port=9090),
        ),
        (
            ServerConfig(public_metrics=True),
            KEYS,
            MetricsPlacement(public=True, admin=False, own_port=None),
        ),
        (
            ServerConfig(admin_port=8081, public_metrics=True),
            KEYS,
            MetricsPlacement(public=True, admin=True, own_port=None),
        ),
        (
            ServerConfig(public_metrics=False),
            NO_KEYS,
            MetricsPlacement(public=False, admin=False, own_port=None),
        ),
    ],
)
def test_metrics_go_where_prometheus_scrapes_and_on_the_public_port_only_when_said(
    server: ServerConfig, auth: AuthConfig, placement: MetricsPlacement
) -> None:
    assert place_metrics(server, auth) == placement


def test_metrics_served_nowhere_is_noticed() -> None:
    assert place_metrics(ServerConfig(), KEYS).nowhere
    assert not place_metrics(ServerConfig(admin_port=8081), KEYS).nowhere

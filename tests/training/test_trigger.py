"""The retraining trigger: the decision on its own, and the watcher against a running gateway
whose captures and metrics it reads, starting a real (harmless) process when retraining is due."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx

from tests.support.demo import gateway_config
from tests.support.processes import running_gateway, stub_upstream
from tests.support.waiting import wait_until
from training.trigger import Counts, TriggerConfig, decide, watch

CONFIG = TriggerConfig(min_new_failures=10, min_requests=10)


def test_no_retraining_without_enough_new_failures() -> None:
    decision = decide(Counts(), Counts(validations=100, invalid=90), 3, CONFIG)
    assert not decision.retrain
    assert "3 new failures" in decision.reason


def test_a_schema_invalid_rate_over_its_threshold_triggers() -> None:
    decision = decide(Counts(10, 1), Counts(110, 51), 40, CONFIG)
    assert decision.retrain
    assert "schema-invalid rate 0.50 > 0.2" in decision.reason


def test_healthy_signals_do_not_trigger() -> None:
    before = Counts(validations=100, invalid=5, checks=100, refusals=1)
    after = Counts(validations=200, invalid=10, checks=200, refusals=2, drift_psi=0.05)
    assert not decide(before, after, 500, CONFIG).retrain


def test_drift_over_its_threshold_triggers() -> None:
    decision = decide(Counts(), Counts(drift_psi=0.6), 50, CONFIG)
    assert decision.retrain
    assert "drift PSI 0.60" in decision.reason


def test_the_watcher_starts_training_as_its_own_process(tmp_path: Path) -> None:
    marker = tmp_path / "trained"
    command = f"{sys.executable} -c \"import pathlib; pathlib.Path('{marker}').write_text('ran')\""
    captures = tmp_path / "captures.db"
    with stub_upstream() as upstream:
        # The stub answers prose: every answer breaks the route's schema and is captured.
        config = gateway_config(
            [upstream],
            routes={"triage": {"schema": {"type": "object"}, "on_invalid": "flag"}},
            capture={"path": str(captures)},
            state={"dir": str(tmp_path / "state")},
        )
        with running_gateway(config, tmp_path) as origin:
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    httpx.post(
                        f"{origin}/v1/chat/completions",
                        json={"model": "triage", "messages": [{"role": "user", "content": "x"}]},
                    )

            driver = threading.Thread(target=traffic)
            driver.start()
            try:
                decisions = list(watch(origin, "triage", captures, command, CONFIG, 1.0, rounds=3))
            finally:
                stop.set()
                driver.join()
    assert any(d.retrain for d in decisions), [d.reason for d in decisions]
    wait_until(marker.exists, 10, "the training process to run")

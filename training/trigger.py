"""When a route needs retraining, and starting it: a watcher beside the gateway, never in it.

`turnout flywheel watch` reads the gateway's /metrics and the capture file every interval.
Between two reads it computes the route's schema-invalid and refusal rates, takes the highest
drift PSI, and counts captured failures since the last trigger; when a rate or the drift is
over its threshold and enough new failures exist, it runs the configured command (e.g.
`turnout dataset build ... && turnout train ...`, or `kubectl create job ...`) as a process of
its own, and does not trigger again while that process runs.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from training.capture import read_captures

log = logging.getLogger("turnout.trigger")


class TriggerConfig(BaseModel):
    """Thresholds for one route (any one crossed, with enough new failures, triggers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_invalid_rate: float = Field(default=0.2, ge=0, le=1)
    refusal_rate: float = Field(default=0.2, ge=0, le=1)
    drift_psi: float = Field(default=0.25, ge=0)
    min_new_failures: int = Field(default=200, gt=0)
    min_requests: int = Field(default=50, gt=0, description="answers between reads to judge")


@dataclass(frozen=True, slots=True)
class Counts:
    """Cumulative counters of one route, as /metrics shows them."""

    validations: float = 0.0
    invalid: float = 0.0
    checks: float = 0.0
    refusals: float = 0.0
    drift_psi: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    retrain: bool
    reason: str


def route_counts(metrics_text: str, route: str) -> Counts:
    validations = invalid = checks = refusals = drift = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.labels.get("route") != route:
                continue
            if sample.name == "turnout_schema_validations_total":
                validations += sample.value
                if sample.labels.get("result") != "valid":
                    invalid += sample.value
            elif sample.name == "turnout_refusal_checks_total":
                checks += sample.value
                if sample.labels.get("result") == "refusal":
                    refusals += sample.value
            elif sample.name == "turnout_drift_score" and sample.labels.get("statistic") == "psi":
                drift = max(drift, sample.value)
    return Counts(validations, invalid, checks, refusals, drift)


def decide(before: Counts, now: Counts, new_failures: int, config: TriggerConfig) -> Decision:
    """Whether to retrain, judged on what happened between two reads."""
    if new_failures < config.min_new_failures:
        return Decision(False, f"{new_failures} new failures, {config.min_new_failures} needed")
    judged = now.validations - before.validations
    checked = now.checks - before.checks
    signals = []
    if judged >= config.min_requests:
        rate = (now.invalid - before.invalid) / judged
        if rate > config.schema_invalid_rate:
            signals.append(f"schema-invalid rate {rate:.2f} > {config.schema_invalid_rate}")
    if checked >= config.min_requests:
        rate = (now.refusals - before.refusals) / checked
        if rate > config.refusal_rate:
            signals.append(f"refusal rate {rate:.2f} > {config.refusal_rate}")
    if now.drift_psi > config.drift_psi:
        signals.append(f"drift PSI {now.drift_psi:.2f} > {config.drift_psi}")
    if not signals:
        return Decision(False, "every signal is under its threshold")
    return Decision(True, "; ".join(signals) + f"; {new_failures} new failures")


def _failures_since(captures: Path, route: str, since: float) -> int:
    stored = read_captures(captures, route) if captures.exists() else []
    return sum(1 for c in stored if c.record.failed and c.record.created_at > since)


def watch(
    gateway: str,
    route: str,
    captures: Path,
    command: str,
    config: TriggerConfig,
    interval_s: float,
    rounds: int | None = None,
) -> Iterable[Decision]:
    """Read, decide, and run `command` when retraining is due; yields each decision."""
    previous = route_counts(httpx.get(f"{gateway}/metrics", timeout=10).text, route)
    last_trigger = 0.0
    running: subprocess.Popen[bytes] | None = None
    done = 0
    while rounds is None or done < rounds:
        time.sleep(interval_s)
        done += 1
        current = route_counts(httpx.get(f"{gateway}/metrics", timeout=10).text, route)
        decision = decide(previous, current, _failures_since(captures, route, last_trigger), config)
        previous = current
        if decision.retrain and (running is None or running.poll() is not None):
            log.warning("retraining %s: %s", route, decision.reason)
            running = subprocess.Popen(shlex.split(command))
            last_trigger = time.time()
        yield decision

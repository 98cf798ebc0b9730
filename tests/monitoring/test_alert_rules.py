"""The shipped alert rules load in promtool and every alert passes its own unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
RULES = RULES_DIR / "turnout-alerts.yml"
RULE_TESTS = RULES_DIR / "turnout-alerts.test.yml"
REQUIRED_ALERTS = {
    "TurnoutHighErrorRate",
    "TurnoutSchemaInvalidRate",
    "TurnoutRefusalRateJump",
    "TurnoutInputDrift",
    "TurnoutSemanticDrift",
    "TurnoutLatencySLOFastBurn",
    "TurnoutLatencySLOSlowBurn",
    "TurnoutBackendDown",
    "TurnoutCaptureDrops",
    "TurnoutAdapterColdStartWaits",
}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, (
        "promtool is missing: install Debian's prometheus package (apt-get install -y prometheus)"
    )
    return found


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_cover_every_required_alert_each_with_summary_and_runbook() -> None:
    names = {str(rule["alert"]) for rule in alerts()}
    assert names == REQUIRED_ALERTS
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"]
        assert "\n" not in annotations["runbook"]
        assert "docs/monitoring.md#alerts" in annotations["runbook"]


def test_every_alert_is_expected_to_fire_in_some_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == {str(rule["alert"]) for rule in alerts()}

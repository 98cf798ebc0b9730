"""The signals benchmark is a command that prints its measurements as JSON."""

from __future__ import annotations

import json
import subprocess
import sys


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

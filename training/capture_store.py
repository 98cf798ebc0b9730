"""The capture file: its schema and migrations, and what operators do to stored rows.

Every row says whose it is: captures carry the tenant and key id (never the key) of the request,
the gateway's own request id (unique, the join key) and the client's `x-request-id` beside it;
feedback rows carry the tenant whose request they rate. Here: opening (and migrating) a file,
resolving which captured request a piece of feedback is about, deleting a tenant's rows with an
audit record, purging rows past their retention, and the index of datasets built from the file.

Deletions and purges run with `secure_delete` on and checkpoint the WAL afterwards, so deleted
text is overwritten in the file rather than left in free pages.

Imports nothing heavy: the gateway process may import this module.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from training.review.schema import DELETE_ORPHANS, REVIEW_TABLES

SCHEMA_VERSION = 2
UNATTRIBUTED = "(unattributed)"  # rows with no tenant: captured without auth, or before v2

TrainingUse = Literal["allow", "deny"]
FeedbackResult = Literal["written", "not_found", "ambiguous", "unavailable"]

_TABLES = """
CREATE TABLE IF NOT EXISTS captures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    route TEXT NOT NULL,
    version TEXT NOT NULL,
    arm TEXT NOT NULL,
    created_at REAL NOT NULL,
    endpoint TEXT NOT NULL,
    messages TEXT,
    prompt TEXT,
    output TEXT NOT NULL,
    finish_reason TEXT,
    schema_verdict TEXT NOT NULL,
    schema_errors TEXT NOT NULL,
    refusal INTEGER,
    latency_s REAL NOT NULL,
    redacted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    rating INTEGER NOT NULL,
    correction TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    captures INTEGER NOT NULL,
    feedback INTEGER NOT NULL,
    datasets TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    route TEXT NOT NULL,
    created_at REAL NOT NULL,
    sha256 TEXT NOT NULL,
    tenants TEXT NOT NULL
);
"""

# Columns added in version 2: a file written by version 1 gets them (NULL for old rows).
_ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "captures": (
        ("client_request_id", "TEXT"),
        ("tenant", "TEXT"),
        ("key_id", "TEXT"),
        ("training", "TEXT NOT NULL DEFAULT 'allow'"),
    ),
    "feedback": (("tenant", "TEXT"), ("author", "TEXT"), ("key_id", "TEXT")),
}

_INDEXES = """
CREATE INDEX IF NOT EXISTS captures_by_route ON captures (route, seq);
CREATE INDEX IF NOT EXISTS captures_by_request ON captures (request_id);
CREATE INDEX IF NOT EXISTS captures_by_client_request ON captures (client_request_id);
CREATE INDEX IF NOT EXISTS captures_by_tenant ON captures (tenant);
CREATE INDEX IF NOT EXISTS captures_by_age ON captures (created_at);
CREATE INDEX IF NOT EXISTS feedback_by_request ON feedback (request_id, seq);
CREATE INDEX IF NOT EXISTS feedback_by_tenant ON feedback (tenant);
"""


def columns_of(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}


def migrate(connection: sqlite3.Connection) -> None:
    """Create what is missing: tables, the columns version 2 added, indexes."""
    connection.executescript(_TABLES)
    # Several gateway workers open the file at once: the check and the additions are one
    # write transaction, so a second migrator waits and then finds the columns there.
    connection.execute("BEGIN IMMEDIATE")
    try:
        for table, added in _ADDED_COLUMNS.items():
            present = columns_of(connection, table)
            for name, declaration in added:
                if name not in present:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    connection.executescript(_INDEXES)
    connection.executescript(REVIEW_TABLES)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _enter_wal(connection: sqlite3.Connection, timeout_s: float) -> None:
    """WAL mode; SQLite answers `database is locked` at once (no busy wait) while another
    process switches a new file's mode, so several workers opening it together retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def connect(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to a capture file in WAL mode, its tables created or migrated if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    _enter_wal(connection, timeout_s)
    connection.execute("PRAGMA synchronous=FULL")
    # Deleted rows are overwritten with zeros, not left readable in free pages.
    connection.execute("PRAGMA secure_delete=ON")
    migrate(connection)
    return connection


@dataclass(frozen=True)
class ResolvedRequest:
    """The captured request a piece of feedback is about: its gateway id and its tenant."""

    request_id: str
    tenant: str | None


def resolve_request(
    connection: sqlite3.Connection, given_id: str, tenant: str | None
) -> ResolvedRequest | Literal["not_found", "ambiguous"]:
    """The captured request `given_id` names, among `tenant`'s (None: among everyone's).

    `given_id` is the gateway's request id (unique) or a client's `x-request-id` (the latest
    request that used it). Among everyone's, a client id that several tenants used is ambiguous.
    """
    where = "(request_id = ? OR client_request_id = ?)"
    args: list[Any] = [given_id, given_id, given_id]  # `exact`, then the two in `where`
    if tenant is not None:
        where += " AND tenant = ?"
        args.append(tenant)
    rows = connection.execute(
        f"SELECT request_id, tenant, request_id = ? AS exact FROM captures WHERE {where}"
        " ORDER BY exact DESC, seq DESC LIMIT 64",
        args,
    ).fetchall()
    if not rows:
        return "not_found"
    request_id, owner, exact = rows[0]
    if not exact and tenant is None and len({row[1] for row in rows}) > 1:
        return "ambiguous"
    return ResolvedRequest(request_id, owner)


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset built from this capture file: where it is and how much each tenant gave."""

    path: str
    route: str
    created_at: float
    sha256: str
    tenants: Mapping[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "route": self.route,
            "created_at": self.created_at,
            "sha256": self.sha256,
            "tenants": dict(self.tenants),
        }


def record_dataset(path: Path, entry: DatasetEntry) -> None:
    """Note in the capture file at `path` that a dataset was built from it."""
    connection = connect(path)
    try:
        with connection:
            connection.execute(
                "INSERT INTO datasets (path, route, created_at, sha256, tenants)"
                " VALUES (?,?,?,?,?)",
                (
                    entry.path,
                    entry.route,
                    entry.created_at,
                    entry.sha256,
                    json.dumps(dict(entry.tenants), sort_keys=True),
                ),
            )
    finally:
        connection.close()


def datasets_with_tenant(connection: sqlite3.Connection, tenant: str) -> list[DatasetEntry]:
    """The datasets built from this file that contain examples of `tenant`, oldest first."""
    found = []
    for path, route, created_at, sha256, tenants in connection.execute(
        "SELECT path, route, created_at, sha256, tenants FROM datasets ORDER BY seq"
    ):
        counts: dict[str, int] = json.loads(tenants)
        if counts.get(tenant, 0) > 0:
            found.append(DatasetEntry(path, route, created_at, sha256, counts))
    return found


@dataclass(frozen=True)
class TenantDeletion:
    """What deleting a tenant's rows removed, and the datasets that still hold its data."""

    tenant: str
    captures: int
    feedback: int
    datasets: tuple[DatasetEntry, ...]
    at: float
    actor: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "captures": self.captures,
            "feedback": self.feedback,
            "datasets": [entry.as_dict() for entry in self.datasets],
            "at": self.at,
            "actor": self.actor,
        }


def _delete_review_orphans(connection: sqlite3.Connection) -> None:
    # Review items and judgements (corrections are text) go with the captures they are about.
    for statement in DELETE_ORPHANS:
        connection.execute(statement)


def _checkpoint(connection: sqlite3.Connection) -> None:
    # Old page images live on in the WAL until a checkpoint moves the new ones into the file.
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def delete_tenant(connection: sqlite3.Connection, tenant: str, actor: str) -> TenantDeletion:
    """Delete every capture and feedback row of `tenant`, and write the audit record."""
    with connection:
        feedback = connection.execute(
            "DELETE FROM feedback WHERE tenant = ?"
            " OR request_id IN (SELECT request_id FROM captures WHERE tenant = ?)",
            (tenant, tenant),
        ).rowcount
        captures = connection.execute("DELETE FROM captures WHERE tenant = ?", (tenant,)).rowcount
        _delete_review_orphans(connection)
        datasets = tuple(datasets_with_tenant(connection, tenant))
        deletion = TenantDeletion(tenant, captures, feedback, datasets, time.time(), actor)
        connection.execute(
            "INSERT INTO deletions (tenant, at, actor, captures, feedback, datasets)"
            " VALUES (?,?,?,?,?,?)",
            (
                tenant,
                deletion.at,
                actor,
                captures,
                feedback,
                json.dumps([entry.as_dict() for entry in datasets]),
            ),
        )
    _checkpoint(connection)
    return deletion


def read_deletions(path: Path) -> list[dict[str, Any]]:
    """The audit records of tenant deletions, oldest first."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT tenant, at, actor, captures, feedback, datasets FROM deletions ORDER BY seq"
        ).fetchall()
    finally:
        connection.close()
    return [
        {
            "tenant": tenant,
            "at": at,
            "actor": actor,
            "captures": captures,
            "feedback": feedback,
            "datasets": json.loads(datasets),
        }
        for tenant, at, actor, captures, feedback, datasets in rows
    ]


def purge_older_than(connection: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
    """Delete captures created before `cutoff` (epoch seconds) and their feedback, and feedback
    older than that; the counts of captures and feedback rows deleted."""
    with connection:
        feedback = connection.execute(
            "DELETE FROM feedback WHERE created_at < ?"
            " OR request_id IN (SELECT request_id FROM captures WHERE created_at < ?)",
            (cutoff, cutoff),
        ).rowcount
        captures = connection.execute(
            "DELETE FROM captures WHERE created_at < ?", (cutoff,)
        ).rowcount
        if captures:
            _delete_review_orphans(connection)
    if captures or feedback:
        _checkpoint(connection)
    return captures, feedback

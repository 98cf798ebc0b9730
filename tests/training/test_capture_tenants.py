"""Whose captured data it is: schema migration, feedback bound to its tenant's requests,
deletion with its audit record, retention purge, the index of datasets built."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from training.capture import CaptureRecord, CaptureSettings, SqliteCaptureSink, read_captures
from training.capture_store import (
    SCHEMA_VERSION,
    DatasetEntry,
    connect,
    delete_tenant,
    read_deletions,
    record_dataset,
)


def _settings(path: Path, **fields: object) -> CaptureSettings:
    return CaptureSettings.model_validate({"path": str(path), "flush_interval_s": 0.02, **fields})


def _answer(request_id: str, verdict: str = "valid", **fields: object) -> CaptureRecord:
    values: dict[str, object] = {
        "request_id": request_id,
        "route": "support-triage",
        "version": "support-triage@v1",
        "arm": "stable",
        "created_at": time.time(),
        "endpoint": "chat",
        "messages": ({"role": "user", "content": "my invoice is wrong"},),
        "output": '{"label": "billing"}',
        "finish_reason": "stop",
        "schema_verdict": verdict,
        **fields,
    }
    return CaptureRecord(**values)  # type: ignore[arg-type]


# The schema version 1 wrote, verbatim: a file from before tenants existed.
V1_SCHEMA = """
CREATE TABLE captures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, route TEXT NOT NULL,
    version TEXT NOT NULL, arm TEXT NOT NULL, created_at REAL NOT NULL, endpoint TEXT NOT NULL,
    messages TEXT, prompt TEXT, output TEXT NOT NULL, finish_reason TEXT,
    schema_verdict TEXT NOT NULL, schema_errors TEXT NOT NULL, refusal INTEGER,
    latency_s REAL NOT NULL, redacted INTEGER NOT NULL
);
CREATE INDEX captures_by_route ON captures (route, seq);
CREATE INDEX captures_by_request ON captures (request_id);
CREATE TABLE feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, rating INTEGER NOT NULL,
    correction TEXT, created_at REAL NOT NULL
);
CREATE INDEX feedback_by_request ON feedback (request_id, seq);
PRAGMA user_version=1;
"""


def _v1_file(path: Path, created_at: float) -> None:
    with sqlite3.connect(path) as connection:
        connection.executescript(V1_SCHEMA)
        connection.execute(
            "INSERT INTO captures (request_id, route, version, arm, created_at, endpoint, messages,"
            " output, schema_verdict, schema_errors, latency_s, redacted)"
            " VALUES ('old-1', 'support-triage', 'v1', 'stable', ?, 'chat', ?, 'old answer',"
            " 'invalid', '[]', 0.1, 0)",
            (created_at, json.dumps([{"role": "user", "content": "an old question"}])),
        )
        connection.execute(
            "INSERT INTO feedback (request_id, rating, correction, created_at)"
            " VALUES ('old-1', -1, 'old fix', ?)",
            (created_at,),
        )


def test_a_version_1_file_is_read_as_is_and_migrated_when_a_writer_opens_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "captures.db"
    _v1_file(db, time.time())
    # A reader never changes the file, and reads old rows as unattributed, allowed.
    (old,) = read_captures(db)
    record = old.record
    assert (record.request_id, record.tenant, record.training) == ("old-1", None, "allow")
    assert old.correction == "old fix"
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (1,)

    sink = SqliteCaptureSink(_settings(db))
    assert sink.offer(_answer("new-1", verdict="invalid", tenant="alice", client_request_id="c1"))
    # Feedback still reaches the old row by its id (admins: any tenant's), never a tenant's.
    assert sink.add_feedback("old-1", rating=1, tenant="alice").result(10) == "not_found"
    assert sink.add_feedback("old-1", rating=1, author="admin:ops").result(10) == "written"
    sink.close()
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    old, new = read_captures(db)
    assert (old.record.tenant, old.rating, old.feedback_count) == (None, 1, 2)
    assert (new.record.tenant, new.record.client_request_id) == ("alice", "c1")


def test_feedback_finds_only_its_tenants_requests_by_either_id(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = SqliteCaptureSink(_settings(db))
    # Both tenants sent the same client id; the gateway's ids differ.
    sink.offer(_answer("gw-a", verdict="invalid", tenant="alice", client_request_id="shared"))
    sink.offer(_answer("gw-b", verdict="invalid", tenant="bob", client_request_id="shared"))
    results = {
        "bob on alice's gateway id": sink.add_feedback("gw-a", -1, "x", tenant="bob"),
        "unknown id": sink.add_feedback("nothing-here", -1, "x", tenant="bob"),
        "bob on the shared client id": sink.add_feedback("shared", -1, "bob's", tenant="bob"),
        "alice on her gateway id": sink.add_feedback("gw-a", 1, tenant="alice"),
        "an admin on the shared client id": sink.add_feedback("shared", 1, author="admin:ops"),
        "an admin on bob's gateway id": sink.add_feedback("gw-b", 0, author="admin:ops"),
    }
    sink.close()
    assert {what: future.result(10) for what, future in results.items()} == {
        "bob on alice's gateway id": "not_found",
        "unknown id": "not_found",
        "bob on the shared client id": "written",
        "alice on her gateway id": "written",
        "an admin on the shared client id": "ambiguous",
        "an admin on bob's gateway id": "written",
    }
    by_id = {s.record.request_id: s for s in read_captures(db)}
    assert (by_id["gw-a"].rating, by_id["gw-a"].correction) == (1, None)
    assert (by_id["gw-b"].rating, by_id["gw-b"].correction, by_id["gw-b"].feedback_count) == (
        0,
        None,
        2,
    )
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT request_id, tenant, author FROM feedback ORDER BY seq"
        ).fetchall()
    assert rows == [("gw-b", "bob", ""), ("gw-a", "alice", ""), ("gw-b", "bob", "admin:ops")]


def test_deleting_a_tenant_removes_its_rows_overwrites_them_and_is_audited(
    tmp_path: Path,
) -> None:
    db = tmp_path / "captures.db"
    sink = SqliteCaptureSink(_settings(db, default={"redact_pii": False}))
    marker = "zebra-crossing-quartz"
    for index in range(50):
        sink.offer(
            _answer(
                f"a{index}",
                verdict="invalid",
                tenant="alice",
                messages=({"role": "user", "content": f"{marker} {index}"},),
            )
        )
        sink.offer(_answer(f"b{index}", verdict="invalid", tenant="bob"))
    assert sink.add_feedback("a1", -1, f"{marker} fixed", tenant="alice").result(10) == "written"
    assert sink.add_feedback("b1", -1, "bob's fix", tenant="bob").result(10) == "written"
    record_dataset(db, DatasetEntry("/data/ds1", "support-triage", 1.0, "f00d", {"alice": 3}))
    record_dataset(db, DatasetEntry("/data/ds2", "support-triage", 2.0, "beef", {"bob": 4}))
    deletion = sink.delete_tenant("alice", "admin:ops").result(10)
    # The text is gone from the file and its WAL, not only from the tables, while the writer
    # still has the file open.
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert marker.encode() not in on_disk
    sink.close()

    assert (deletion.captures, deletion.feedback) == (50, 1)
    assert [entry.path for entry in deletion.datasets] == ["/data/ds1"]
    stored = read_captures(db)
    assert {s.record.tenant for s in stored} == {"bob"}
    assert len(stored) == 50
    assert next(s for s in stored if s.record.request_id == "b1").correction == "bob's fix"
    (audit,) = read_deletions(db)
    assert audit["tenant"] == "alice"
    assert (audit["captures"], audit["feedback"], audit["actor"]) == (50, 1, "admin:ops")
    assert [d["path"] for d in audit["datasets"]] == ["/data/ds1"]
    # Deleting again finds nothing, and says so.
    connection = connect(db)
    try:
        again = delete_tenant(connection, "alice", "cli")
    finally:
        connection.close()
    assert (again.captures, again.feedback) == (0, 0)


def test_captures_past_their_retention_are_purged_when_the_writer_starts(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = SqliteCaptureSink(_settings(db))
    now = time.time()
    sink.offer(_answer("old", verdict="invalid", created_at=now - 3 * 86_400, tenant="alice"))
    sink.offer(_answer("recent", verdict="invalid", created_at=now - 3600, tenant="alice"))
    assert sink.add_feedback("old", -1, "fix", tenant="alice").result(10) == "written"
    sink.close()
    assert len(read_captures(db)) == 2

    purging = SqliteCaptureSink(_settings(db, retention_days=1))
    purging.offer(_answer("new", verdict="invalid", tenant="bob"))
    purging.close()
    assert [s.record.request_id for s in read_captures(db)] == ["recent", "new"]
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM feedback").fetchone() == (0,)

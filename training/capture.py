"""Capture answered requests off the request path into an append-only SQLite file.

The gateway builds a `CaptureRecord` per answered request and calls `offer`: a hash, a policy
check and a non-blocking append to a bounded in-memory queue, nothing else, so it is safe on the
event loop. One background thread redacts, serialises and writes batches, each in one
transaction, to SQLite in WAL mode with `synchronous=FULL`: a committed batch survives a killed
process (and a power cut), a half-written one is rolled back on the next open. An abrupt kill
loses at most the records still in memory: `turnout_capture_queue_depth` says how many that is at
any moment, and it never exceeds the queue's capacity plus one batch. A full queue drops the
record and counts it (`turnout_capture_records_total{result="dropped"}`); it never waits.

Imports nothing heavy: the gateway process may import this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from monitoring.metrics import CAPTURE_QUEUE_DEPTH, CAPTURE_RECORDS
from training.redaction import redact

log = logging.getLogger(__name__)

SchemaVerdict = Literal["valid", "invalid", "truncated", "none"]
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CaptureRecord:
    """One answered request as the gateway saw it."""

    request_id: str
    route: str
    version: str
    arm: str
    created_at: float
    endpoint: Literal["chat", "completions"]
    output: str
    finish_reason: str | None
    messages: tuple[Mapping[str, Any], ...] | None = None
    prompt: str | None = None
    schema_verdict: SchemaVerdict = "none"
    schema_errors: tuple[str, ...] = ()
    refusal: bool | None = None
    latency_s: float = 0.0

    @property
    def failed(self) -> bool:
        """The answer broke its schema, was cut off, or refused."""
        return (
            self.schema_verdict in ("invalid", "truncated")
            or self.refusal is True
            or self.finish_reason == "length"
        )


@dataclass(frozen=True)
class Feedback:
    """A human verdict on a captured request: a rating (>0 good, <0 bad) and maybe a fix."""

    request_id: str
    rating: int
    correction: str | None
    created_at: float


class CapturePolicy(BaseModel):
    """What one route captures: every failure, a share of successes, redacted or not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    failures: bool = Field(default=True, description="capture every failed answer")
    success_sample_rate: float = Field(
        default=0.05, ge=0, le=1, description="share of successful answers captured"
    )
    redact_pii: bool = Field(default=True, description="redact PII before anything is written")

    def wants(self, record: CaptureRecord) -> bool:
        """Whether this policy keeps `record`; the sample is decided by the request id's hash."""
        if not self.enabled:
            return False
        if record.failed:
            return self.failures
        bucket = zlib.crc32(record.request_id.encode()) / 0x1_0000_0000
        return bucket < self.success_sample_rate


class CaptureSettings(BaseModel):
    """Where captures go, how much may wait in memory, and each route's policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = ".turnout/captures.db"
    queue_capacity: int = Field(default=10_000, gt=0, description="records held in memory")
    batch_size: int = Field(default=256, gt=0, description="records per transaction")
    flush_interval_s: float = Field(default=0.5, gt=0, description="longest wait for a batch")
    default: CapturePolicy = CapturePolicy()
    routes: dict[str, CapturePolicy] = Field(default_factory=dict)
    redact_feedback: bool = True

    def policy(self, route: str) -> CapturePolicy:
        return self.routes.get(route, self.default)


class CaptureSink(Protocol):
    """Where the gateway hands captured requests and feedback; implementations never block."""

    def offer(self, record: CaptureRecord) -> bool:
        """Queue `record` if the route's policy wants it; False if skipped or dropped."""
        ...

    def add_feedback(self, request_id: str, rating: int, correction: str | None = None) -> bool:
        """Queue a verdict on a captured request; False if the queue is full or closed."""
        ...

    def close(self) -> None:
        """Write everything queued, then stop."""
        ...


@dataclass
class CaptureStats:
    """Counts since the sink opened (also exported as metrics).

    `offered`, `skipped` and `dropped` change on the caller's thread, the rest on the writer's.
    """

    offered: int = 0
    skipped: int = 0
    dropped: int = 0
    written: int = 0
    write_failed: int = 0
    feedback_written: int = 0
    failed_batches: int = 0


_STOP = object()

_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS captures_by_route ON captures (route, seq);
CREATE INDEX IF NOT EXISTS captures_by_request ON captures (request_id);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    rating INTEGER NOT NULL,
    correction TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_by_request ON feedback (request_id, seq);
"""


def connect(path: Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to a capture file in WAL mode, creating its tables if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(_SCHEMA)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return connection


def _redact_message(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        content = redact(content)
    elif isinstance(content, list):
        content = [
            {**part, "text": redact(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    return {**message, "content": content}


def _row(record: CaptureRecord, redacted: bool) -> tuple[Any, ...]:
    messages = record.messages
    prompt, output, errors = record.prompt, record.output, list(record.schema_errors)
    if redacted:
        messages = tuple(_redact_message(m) for m in messages) if messages is not None else None
        prompt = redact(prompt) if prompt is not None else None
        output = redact(output)
        errors = [redact(error) for error in errors]
    return (
        record.request_id,
        record.route,
        record.version,
        record.arm,
        record.created_at,
        record.endpoint,
        json.dumps(list(messages), ensure_ascii=False) if messages is not None else None,
        prompt,
        output,
        record.finish_reason,
        record.schema_verdict,
        json.dumps(errors, ensure_ascii=False),
        None if record.refusal is None else int(record.refusal),
        record.latency_s,
        int(redacted),
    )


class SqliteCaptureSink:
    """The `CaptureSink` behind a bounded queue and one writer thread."""

    def __init__(self, settings: CaptureSettings) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self.stats = CaptureStats()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.settings.queue_capacity)
        self._closed = threading.Event()
        connect(self.path).close()
        self._writer = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
        self._writer.start()

    def offer(self, record: CaptureRecord) -> bool:
        try:
            if not self.settings.policy(record.route).wants(record):
                self.stats.skipped += 1
                CAPTURE_RECORDS.labels(result="skipped").inc()
                return False
            self.stats.offered += 1
            return self._enqueue(record)
        except Exception:
            log.exception("capture: offer failed")
            return False

    def add_feedback(self, request_id: str, rating: int, correction: str | None = None) -> bool:
        try:
            return self._enqueue(Feedback(request_id, rating, correction, time.time()))
        except Exception:
            log.exception("capture: add_feedback failed")
            return False

    def _enqueue(self, item: CaptureRecord | Feedback) -> bool:
        if self._closed.is_set():
            accepted = False
        else:
            try:
                self._queue.put_nowait(item)
                accepted = True
            except queue.Full:
                accepted = False
        if not accepted and isinstance(item, CaptureRecord):
            self.stats.dropped += 1
            CAPTURE_RECORDS.labels(result="dropped").inc()
        CAPTURE_QUEUE_DEPTH.set(self._queue.qsize())
        return accepted

    @property
    def pending(self) -> int:
        """Records and feedback waiting in memory: what an abrupt kill would lose now."""
        return self._queue.qsize()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, write what is queued, and wait up to `timeout_s` for the writer."""
        if self._closed.is_set():
            return
        self._closed.set()
        # The writer also stops on its own once the queue is empty; the marker only hurries it.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        self._writer.join(timeout_s)

    def _write_loop(self) -> None:
        connection = connect(self.path)
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._write(connection, batch)
                CAPTURE_QUEUE_DEPTH.set(self._queue.qsize())
        finally:
            connection.close()

    def _next_batch(self) -> list[CaptureRecord | Feedback] | None:
        """Up to one batch of queued items; None once closed and drained."""
        if self._closed.is_set() and self._queue.empty():
            return None
        batch: list[CaptureRecord | Feedback] = []
        try:
            item = self._queue.get(timeout=self.settings.flush_interval_s)
        except queue.Empty:
            return batch
        while True:
            if isinstance(item, CaptureRecord | Feedback):
                batch.append(item)
            if len(batch) >= self.settings.batch_size:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _write(
        self, connection: sqlite3.Connection, batch: Sequence[CaptureRecord | Feedback]
    ) -> None:
        records = [item for item in batch if isinstance(item, CaptureRecord)]
        feedback = [item for item in batch if isinstance(item, Feedback)]
        try:
            rows = [_row(r, self.settings.policy(r.route).redact_pii) for r in records]
            notes = [
                (
                    f.request_id,
                    f.rating,
                    redact(f.correction)
                    if f.correction is not None and self.settings.redact_feedback
                    else f.correction,
                    f.created_at,
                )
                for f in feedback
            ]
            with connection:
                connection.executemany(
                    "INSERT INTO captures (request_id, route, version, arm, created_at, endpoint,"
                    " messages, prompt, output, finish_reason, schema_verdict, schema_errors,"
                    " refusal, latency_s, redacted) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                connection.executemany(
                    "INSERT INTO feedback (request_id, rating, correction, created_at)"
                    " VALUES (?,?,?,?)",
                    notes,
                )
        except Exception:
            log.exception("capture: a batch of %d records could not be written", len(records))
            self.stats.failed_batches += 1
            self.stats.write_failed += len(records)
            CAPTURE_RECORDS.labels(result="dropped").inc(len(records))
            return
        self.stats.written += len(records)
        self.stats.feedback_written += len(feedback)
        CAPTURE_RECORDS.labels(result="written").inc(len(records))


@dataclass(frozen=True)
class StoredCapture:
    """A captured request read back, with the latest feedback given for it."""

    record: CaptureRecord
    redacted: bool
    rating: int | None = None
    correction: str | None = None
    feedback_count: int = field(default=0)


def read_captures(path: Path, route: str | None = None) -> list[StoredCapture]:
    """Every captured request (of `route`, if given) in write order, joined to its feedback."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        where, args = ("WHERE route = ?", (route,)) if route is not None else ("", ())
        rows = connection.execute(
            "SELECT request_id, route, version, arm, created_at, endpoint, messages, prompt,"
            " output, finish_reason, schema_verdict, schema_errors, refusal, latency_s, redacted"
            f" FROM captures {where} ORDER BY seq",
            args,
        ).fetchall()
        latest: dict[str, tuple[int, str | None, int]] = {}
        for request_id, rating, correction in connection.execute(
            "SELECT request_id, rating, correction FROM feedback ORDER BY seq"
        ):
            count = latest.get(request_id, (0, None, 0))[2] + 1
            latest[request_id] = (rating, correction, count)
    finally:
        connection.close()
    stored = []
    for row in rows:
        record = CaptureRecord(
            request_id=row[0],
            route=row[1],
            version=row[2],
            arm=row[3],
            created_at=row[4],
            endpoint=row[5],
            messages=tuple(json.loads(row[6])) if row[6] is not None else None,
            prompt=row[7],
            output=row[8],
            finish_reason=row[9],
            schema_verdict=row[10],
            schema_errors=tuple(json.loads(row[11])),
            refusal=None if row[12] is None else bool(row[12]),
            latency_s=row[13],
        )
        rating, correction, count = latest.get(record.request_id, (None, None, 0))
        stored.append(StoredCapture(record, bool(row[14]), rating, correction, count))
    return stored

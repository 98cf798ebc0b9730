"""Capture answered requests off the request path into a SQLite file, each row its tenant's.

The gateway builds a `CaptureRecord` per answered request and calls `offer`: a hash, a policy
check and a non-blocking append to a bounded in-memory queue, nothing else, so it is safe on the
event loop. One background thread redacts, serialises and writes batches, each in one
transaction, to SQLite in WAL mode with `synchronous=FULL`: a committed batch survives a killed
process (and a power cut), a half-written one is rolled back on the next open. An abrupt kill
loses at most the records still in memory: `turnout_capture_queue_depth` says how many that is at
any moment, and it never exceeds the queue's capacity plus one batch. A full queue drops the
record and counts it (`turnout_capture_records_total{result="dropped"}`); it never waits.

Rows are only appended, except by a tenant's deletion and the retention purge
(`training/capture_store.py`), which the same writer thread runs in queue order.

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
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.config_paths import ConfigPath
from gateway.errors import Failure, TurnoutError
from monitoring.metrics import (
    CAPTURE_QUEUE_DEPTH,
    CAPTURE_RECORDS,
    REVIEW_ITEMS,
    REVIEW_QUEUE_DEPTH,
)
from training.capture_store import (
    SCHEMA_VERSION,
    FeedbackResult,
    ResolvedRequest,
    TenantDeletion,
    TrainingUse,
    columns_of,
    connect,
    delete_tenant,
    purge_older_than,
    resolve_request,
)
from training.redaction import redact
from training.review import store as review_store
from training.review.policy import ReviewPolicy, flags_of, pair_selection, selection
from training.review.schema import SHADOW_ARM

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter as CounterChild

__all__ = ["SCHEMA_VERSION", "connect"]  # re-exported: they lived here before capture_store

log = logging.getLogger(__name__)

SchemaVerdict = Literal["valid", "invalid", "truncated", "none"]
_PAIR_STABLE_MEMORY = 4096  # stable answers written by their pair, remembered to skip repeats


class CaptureUnavailable(TurnoutError):
    """The capture queue is full or closed, or its writer failed; nothing was recorded."""

    failure = Failure.UNAVAILABLE
    code = "capture_unavailable"
    retry_after_s = 1.0


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
    # Whose request it was: the key's tenant and key id (never the key); None without auth.
    tenant: str | None = None
    key_id: str | None = None
    # The client's own `x-request-id`, kept beside `request_id` (the gateway's, unique).
    client_request_id: str | None = None
    training: TrainingUse = "allow"
    # The route/version's prompts had drifted from its reference when this was answered.
    drifted: bool = False
    # A shadow candidate's answer (arm `shadow`): the stable answer it was compared with, as it
    # would be captured, and what the comparison flagged (`candidate_worse`, `disagreed`).
    stable: CaptureRecord | None = None
    pair_flags: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """The answer broke its schema, was cut off, or refused."""
        return answer_failed(self.schema_verdict, self.refusal, self.finish_reason)


def answer_failed(
    schema_verdict: SchemaVerdict, refusal: bool | None, finish_reason: str | None
) -> bool:
    """What `CaptureRecord.failed` says of a record with these fields (before one is built)."""
    return (
        schema_verdict in ("invalid", "truncated") or refusal is True or finish_reason == "length"
    )


@dataclass(frozen=True)
class Feedback:
    """A human verdict on a captured request: a rating (>0 good, <0 bad) and maybe a fix.

    `request_id` is the gateway's id of the request or the client's `x-request-id`; only
    requests of `tenant` match (None: anyone's, for admins or without auth). `author` names
    who gave it (`tenant:NAME`, `admin:NAME`, or empty without auth).
    """

    request_id: str
    rating: int
    correction: str | None
    created_at: float
    tenant: str | None = None
    author: str = ""
    key_id: str | None = None


@dataclass(frozen=True)
class _PendingFeedback:
    feedback: Feedback
    result: Future[FeedbackResult]


@dataclass(frozen=True)
class _PendingDeletion:
    tenant: str
    actor: str
    result: Future[TenantDeletion]


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
        return self.keeps(record.request_id, record.failed)

    def keeps(self, request_id: str, failed: bool) -> bool:
        """`wants` for a record with this request id that did or did not fail."""
        if not self.enabled:
            return False
        if failed:
            return self.failures
        bucket = zlib.crc32(request_id.encode()) / 0x1_0000_0000
        return bucket < self.success_sample_rate


class CaptureSettings(BaseModel):
    """Where captures go, how much may wait in memory, and each route's policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: ConfigPath = Field(default=".turnout/captures.db", validate_default=True)
    queue_capacity: int = Field(default=10_000, gt=0, description="records held in memory")
    batch_size: int = Field(default=256, gt=0, description="records per transaction")
    flush_interval_s: float = Field(default=0.5, gt=0, description="longest wait for a batch")
    default: CapturePolicy = CapturePolicy()
    routes: dict[str, CapturePolicy] = Field(default_factory=dict)
    redact_feedback: bool = True
    feedback_max_bytes: int = Field(
        default=131_072, gt=0, description="largest `POST /v1/feedback` body (413 past it)"
    )
    retention_days: float | None = Field(
        default=None, gt=0, description="captures and feedback older than this are deleted"
    )
    purge_interval_s: float = Field(default=3600.0, gt=0, description="how often to purge")

    def policy(self, route: str) -> CapturePolicy:
        return self.routes.get(route, self.default)


class CaptureSink(Protocol):
    """Where the gateway hands captured requests and feedback; implementations never block."""

    def offer(self, record: CaptureRecord) -> bool:
        """Queue `record` if the route's policy wants it; False if skipped or dropped."""
        ...

    def add_feedback(
        self,
        request_id: str,
        rating: int,
        correction: str | None = None,
        *,
        tenant: str | None = None,
        author: str = "",
        key_id: str | None = None,
    ) -> Future[FeedbackResult]:
        """Queue a verdict on a captured request of `tenant` (None: anyone's); the future says
        whether it was written, matched no such request, or could not be queued or written."""
        ...

    def delete_tenant(self, tenant: str, actor: str) -> Future[TenantDeletion]:
        """Delete every capture and feedback row of `tenant`, after what is queued before it."""
        ...

    def close(self) -> None:
        """Write everything queued, then stop."""
        ...


class PairCaptureSink(CaptureSink, Protocol):
    """A capture sink that can say a shadow candidate's record would be skipped before the
    record is built (most are: only failures and a sample are kept)."""

    def skips_candidate(
        self, route: str, request_id: str, failed: bool, pair_flags: tuple[str, ...] | None
    ) -> bool:
        """True, and the record counted as skipped, if `offer` would skip a shadow candidate's
        record with these fields (`pair_flags` None: no stable answer beside it)."""
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
        record.client_request_id,
        record.tenant,
        record.key_id,
        record.training,
    )


_Queued = CaptureRecord | _PendingFeedback | _PendingDeletion

_INSERT_CAPTURES = (
    "INSERT INTO captures (request_id, route, version, arm, created_at, endpoint, messages,"
    " prompt, output, finish_reason, schema_verdict, schema_errors, refusal, latency_s, redacted,"
    " client_request_id, tenant, key_id, training)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_FEEDBACK = (
    "INSERT INTO feedback (request_id, rating, correction, created_at, tenant, author, key_id)"
    " VALUES (?,?,?,?,?,?,?)"
)


def _resolved(result: Future[Any], value: Any) -> None:
    if not result.done():
        result.set_result(value)


def _not_deleted(
    connection: sqlite3.Connection, records: list[CaptureRecord]
) -> list[CaptureRecord]:
    """The records no deletion of their tenant came after (one look-up per batch)."""
    tenants = {record.tenant for record in records if record.tenant is not None}
    if not tenants:
        return records
    marks = ",".join("?" * len(tenants))
    last_deleted: dict[str, float] = dict(
        connection.execute(
            f"SELECT tenant, MAX(at) FROM deletions WHERE tenant IN ({marks}) GROUP BY tenant",
            tuple(tenants),
        ).fetchall()
    )
    if not last_deleted:
        return records
    return [
        record
        for record in records
        if record.tenant is None or record.created_at > last_deleted.get(record.tenant, -1.0)
    ]


class SqliteCaptureSink:
    """The `CaptureSink` behind a bounded queue and one writer thread.

    Feedback and deletions go through the same queue as records, so each sees every record
    offered before it: feedback right after an answer finds it, and a deletion leaves nothing
    of the tenant that was queued before it.
    """

    def __init__(
        self, settings: CaptureSettings, review: Mapping[str, ReviewPolicy] | None = None
    ) -> None:
        """`review`: each route's review policy (routes not in it get the default one); None:
        nothing goes to the review queue."""
        self.settings = settings
        self._review = dict(review or {})
        self._review_default = ReviewPolicy(enabled=review is not None)
        self.path = Path(settings.path)
        self.stats = CaptureStats()
        self._skipped: CounterChild | None = None
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.settings.queue_capacity)
        self._closed = threading.Event()
        self._last_purge = float("-inf")
        # Stable answers written by their shadow pair, whose own records may still come
        # (the writer thread's alone; the oldest forgotten past `_PAIR_STABLE_MEMORY`).
        self._written_by_pairs: OrderedDict[tuple[str, str], None] = OrderedDict()
        connect(self.path).close()
        self._writer = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
        self._writer.start()

    def offer(self, record: CaptureRecord) -> bool:
        try:
            if not (
                self.settings.policy(record.route).wants(record)
                or self._review_reason(record) is not None
            ):
                self._skip()
                return False
            self.stats.offered += 1
            return self._enqueue(record)
        except Exception:
            log.exception("capture: offer failed")
            return False

    def skips_candidate(
        self, route: str, request_id: str, failed: bool, pair_flags: tuple[str, ...] | None
    ) -> bool:
        """`offer`'s decision for a shadow candidate's record (arm `shadow`), before it is built."""
        try:
            if self.settings.policy(route).keeps(request_id, failed) or (
                pair_flags is not None
                and pair_selection(self.review_policy(route), request_id, pair_flags) is not None
            ):
                return False
            self._skip()
            return True
        except Exception:
            log.exception("capture: offer failed")
            return True

    def _skip(self) -> None:
        self.stats.skipped += 1
        if self._skipped is None:  # looked up once: `labels()` locks and builds tuples
            self._skipped = CAPTURE_RECORDS.labels(result="skipped")
        self._skipped.inc()

    def _written_by_pair(self, record: CaptureRecord) -> bool:
        key = (record.request_id, record.arm)
        if key in self._written_by_pairs:
            del self._written_by_pairs[key]
            return True
        return False

    def _redacted(self, record: CaptureRecord) -> bool:
        return self.settings.policy(record.route).redact_pii

    def review_policy(self, route: str) -> ReviewPolicy:
        return self._review.get(route, self._review_default)

    def _review_reason(self, record: CaptureRecord) -> str | None:
        if record.arm == SHADOW_ARM:  # reviewed only as a pair, beside the stable answer
            if record.stable is None:
                return None
            return pair_selection(
                self.review_policy(record.route), record.request_id, record.pair_flags
            )
        flags = flags_of(
            record.schema_verdict, record.refusal, record.drifted, record.finish_reason
        )
        return selection(self.review_policy(record.route), record.request_id, flags)

    def add_feedback(
        self,
        request_id: str,
        rating: int,
        correction: str | None = None,
        *,
        tenant: str | None = None,
        author: str = "",
        key_id: str | None = None,
    ) -> Future[FeedbackResult]:
        result: Future[FeedbackResult] = Future()
        feedback = Feedback(request_id, rating, correction, time.time(), tenant, author, key_id)
        try:
            if not self._enqueue(_PendingFeedback(feedback, result)):
                result.set_result("unavailable")
        except Exception:
            log.exception("capture: add_feedback failed")
            _resolved(result, "unavailable")
        return result

    def delete_tenant(self, tenant: str, actor: str) -> Future[TenantDeletion]:
        result: Future[TenantDeletion] = Future()
        if not self._enqueue(_PendingDeletion(tenant, actor, result)):
            result.set_exception(CaptureUnavailable("The capture queue is full or closed."))
        return result

    def _enqueue(self, item: _Queued) -> bool:
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
                self._purge_if_due(connection)
                batch = self._next_batch()
                if batch is None:
                    return
                run: list[CaptureRecord | _PendingFeedback] = []
                for item in batch:
                    if isinstance(item, _PendingDeletion):
                        self._write(connection, run)
                        run = []
                        self._delete(connection, item)
                    else:
                        run.append(item)
                self._write(connection, run)
                CAPTURE_QUEUE_DEPTH.set(self._queue.qsize())
        finally:
            connection.close()

    def _purge_if_due(self, connection: sqlite3.Connection) -> None:
        days = self.settings.retention_days
        now = time.time()
        if days is None or now - self._last_purge < self.settings.purge_interval_s:
            return
        self._last_purge = now
        try:
            captures, feedback = purge_older_than(connection, now - days * 86_400)
        except Exception:
            log.exception("capture: the retention purge failed")
            return
        if captures or feedback:
            log.info("capture: purged %d captures, %d feedback past retention", captures, feedback)

    def _delete(self, connection: sqlite3.Connection, item: _PendingDeletion) -> None:
        try:
            deletion = delete_tenant(connection, item.tenant, item.actor)
        except Exception as error:
            log.exception("capture: deleting tenant %s failed", item.tenant)
            item.result.set_exception(CaptureUnavailable(f"The deletion failed: {error}"))
            return
        log.info(
            "capture: deleted tenant %s (%d captures, %d feedback) for %s",
            item.tenant,
            deletion.captures,
            deletion.feedback,
            item.actor,
        )
        item.result.set_result(deletion)

    def _next_batch(self) -> list[_Queued] | None:
        """Up to one batch of queued items; None once closed and drained."""
        if self._closed.is_set() and self._queue.empty():
            return None
        batch: list[_Queued] = []
        try:
            item = self._queue.get(timeout=self.settings.flush_interval_s)
        except queue.Empty:
            return batch
        while True:
            if isinstance(item, CaptureRecord | _PendingFeedback | _PendingDeletion):
                batch.append(item)
            if len(batch) >= self.settings.batch_size:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _correction(self, feedback: Feedback) -> str | None:
        if feedback.correction is not None and self.settings.redact_feedback:
            return redact(feedback.correction)
        return feedback.correction

    def _write(
        self, connection: sqlite3.Connection, batch: Sequence[CaptureRecord | _PendingFeedback]
    ) -> None:
        if not batch:
            return
        records = [item for item in batch if isinstance(item, CaptureRecord)]
        pending = [item for item in batch if isinstance(item, _PendingFeedback)]
        results: list[FeedbackResult] = []
        erased = 0
        try:
            with connection:
                # A record its tenant's deletion came after is not written: it was in memory
                # (in this process, or in another worker's queue) when the deletion ran.
                kept = _not_deleted(connection, records)
                erased = len(records) - len(kept)
                records = kept
                # A stable answer a shadow pair already wrote is not written twice.
                rows = [_row(r, self._redacted(r)) for r in records if not self._written_by_pair(r)]
                connection.executemany(_INSERT_CAPTURES, rows)
                self._review_records(connection, records)
                # Each piece of feedback is bound to a captured request of its tenant, found
                # now that every record queued before it is in the file.
                for item in pending:
                    f = item.feedback
                    found = resolve_request(connection, f.request_id, f.tenant)
                    if not isinstance(found, ResolvedRequest):
                        results.append(found)
                        continue
                    connection.execute(
                        _INSERT_FEEDBACK,
                        (
                            found.request_id,
                            f.rating,
                            self._correction(f),
                            f.created_at,
                            found.tenant,
                            f.author,
                            f.key_id,
                        ),
                    )
                    results.append("written")
                    if f.rating < 0:
                        self._review_negative(connection, found.request_id, f.created_at)
        except Exception:
            log.exception("capture: a batch of %d records could not be written", len(records))
            self.stats.failed_batches += 1
            self.stats.write_failed += len(records)
            CAPTURE_RECORDS.labels(result="dropped").inc(len(records))
            for item in pending:
                _resolved(item.result, "unavailable")
            return
        self._refresh_review_depth(connection)
        if erased:
            CAPTURE_RECORDS.labels(result="erased").inc(erased)
        self.stats.written += len(records)
        self.stats.feedback_written += results.count("written")
        CAPTURE_RECORDS.labels(result="written").inc(len(records))
        for item, result in zip(pending, results, strict=True):
            _resolved(item.result, result)

    def _review_records(
        self, connection: sqlite3.Connection, records: Sequence[CaptureRecord]
    ) -> None:
        """Queue the answers the routes' review policies select (in the batch's transaction)."""
        for record in records:
            if record.arm == SHADOW_ARM:  # reviewed only as a pair, beside the stable answer
                if record.stable is not None:
                    self._review_pair(connection, record, record.stable)
                continue
            flags = flags_of(
                record.schema_verdict, record.refusal, record.drifted, record.finish_reason
            )
            policy = self.review_policy(record.route)
            reason = selection(policy, record.request_id, flags)
            if reason is not None:
                self._enqueue_review(
                    connection,
                    record.request_id,
                    (record.route, record.version, record.arm),
                    reason,
                    list(flags),
                    policy,
                    record.created_at,
                )

    def _review_pair(
        self, connection: sqlite3.Connection, candidate: CaptureRecord, stable: CaptureRecord
    ) -> None:
        """Queue a shadow pair as the stable answer's item with the candidate's as its second.
        The stable answer is written here if its own record was not (yet): it was offered before
        the comparison flagged the pair, and its route's capture policy may have skipped it."""
        policy = self.review_policy(stable.route)
        reason = pair_selection(policy, candidate.request_id, candidate.pair_flags)
        if reason is None:
            return
        queued = self._enqueue_review(
            connection,
            stable.request_id,
            (stable.route, stable.version, stable.arm),
            reason,
            list(candidate.pair_flags),
            policy,
            candidate.created_at,
            pair=True,
        )
        key = (stable.request_id, stable.arm)
        if (
            queued != "over_budget"
            and not connection.execute(
                "SELECT 1 FROM captures WHERE request_id = ? AND arm = ? LIMIT 1", key
            ).fetchone()
        ):
            connection.execute(_INSERT_CAPTURES, _row(stable, self._redacted(stable)))
            self._written_by_pairs[key] = None
            while len(self._written_by_pairs) > _PAIR_STABLE_MEMORY:
                self._written_by_pairs.popitem(last=False)

    def _review_negative(self, connection: sqlite3.Connection, request_id: str, at: float) -> None:
        """Negative feedback flags the answer for review (or its queued item)."""
        stratum = review_store.stratum_of(connection, request_id)
        if stratum is None:
            return
        policy = self.review_policy(stratum[0])
        if not policy.enabled or "negative_feedback" not in policy.flags:
            return
        reason = "negative_feedback"
        queued = self._enqueue_review(connection, request_id, stratum, reason, [reason], policy, at)
        if queued == "present":
            review_store.raise_flag(connection, request_id, reason)

    def _enqueue_review(
        self,
        connection: sqlite3.Connection,
        request_id: str,
        stratum: review_store.Stratum,
        reason: str,
        flags: list[str],
        policy: ReviewPolicy,
        now: float,
        pair: bool = False,
    ) -> review_store.Enqueued:
        queued = (review_store.enqueue_pair if pair else review_store.enqueue)(
            connection,
            request_id=request_id,
            stratum=stratum,
            reason=reason,
            flags=flags,
            budget=policy.budget,
            now=now,
        )
        if queued != "present":
            REVIEW_ITEMS.labels(*stratum, queued).inc()
        return queued

    def _refresh_review_depth(self, connection: sqlite3.Connection) -> None:
        try:
            for stratum, depth in review_store.depths(connection).items():
                REVIEW_QUEUE_DEPTH.labels(*stratum).set(depth)
        except sqlite3.Error:
            log.exception("capture: reading the review queue's depth failed")


@dataclass(frozen=True)
class StoredCapture:
    """A captured request read back, with the latest feedback given for it."""

    record: CaptureRecord
    redacted: bool
    rating: int | None = None
    correction: str | None = None
    feedback_count: int = field(default=0)


_READ_COLUMNS = (
    "request_id, route, version, arm, created_at, endpoint, messages, prompt, output,"
    " finish_reason, schema_verdict, schema_errors, refusal, latency_s, redacted"
)
_V2_COLUMNS = ("client_request_id", "tenant", "key_id", "training")


def read_captures(path: Path, route: str | None = None) -> list[StoredCapture]:
    """Every captured request (of `route`, if given) in write order, joined to its feedback.

    Reads a file of any schema version without changing it (rows from before version 2 have
    no tenant and count as training `allow`).
    """
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        present = columns_of(connection, "captures")
        added = ", ".join(
            name if name in present else ("'allow'" if name == "training" else "NULL")
            for name in _V2_COLUMNS
        )
        where, args = ("WHERE route = ?", (route,)) if route is not None else ("", ())
        rows = connection.execute(
            f"SELECT {_READ_COLUMNS}, {added} FROM captures {where} ORDER BY seq", args
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
            client_request_id=row[15],
            tenant=row[16],
            key_id=row[17],
            training="deny" if row[18] == "deny" else "allow",
        )
        rating, correction, count = latest.get(record.request_id, (None, None, 0))
        stored.append(StoredCapture(record, bool(row[14]), rating, correction, count))
    return stored

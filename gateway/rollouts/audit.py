"""The append-only audit log of rollout changes: one fsynced JSON line per change.

Writes run on one dedicated thread, in call order, off the event loop. `append` returns only
after the line is on disk (fsync), so a change whose call returned survives a crash.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.rollouts.model import RolloutDecision


def audit_record(decision: RolloutDecision) -> dict[str, Any]:
    """The JSON object one decision becomes: who, when, what, why, and the numbers."""
    record = {field.name: getattr(decision, field.name) for field in fields(decision)}
    record["numbers"] = dict(decision.numbers)
    record["time"] = datetime.fromtimestamp(decision.at, UTC).isoformat()
    return record


class AuditLog:
    """Appends decisions to a JSONL file; never rewrites or truncates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-audit")
        self._descriptor: int | None = None

    def _write(self, line: bytes) -> None:
        if self._descriptor is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        written = 0
        while written < len(line):
            written += os.write(self._descriptor, line[written:])
        os.fsync(self._descriptor)

    async def append(self, decision: RolloutDecision) -> None:
        """Write one decision; returns once it is durably on disk."""
        line = orjson.dumps(audit_record(decision)) + b"\n"
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, line)

    def close(self) -> None:
        """Finish pending writes and close the file."""
        self._thread.shutdown(wait=True)
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def read_audit_log(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit file, oldest first.

    A line cut short by a crash in the middle of a write (its call never returned) is skipped.
    """
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return records

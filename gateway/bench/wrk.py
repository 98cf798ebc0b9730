"""Drives wrk (the C load generator) with a POST body and reads its latency summary as JSON."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"errors":%%d,"non_2xx":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int

    @classmethod
    def median(cls, results: list[LoadResult]) -> LoadResult:
        """Each figure's median over several runs (errors are added up)."""
        return cls(
            requests_per_s=statistics.median(r.requests_per_s for r in results),
            p50_ms=statistics.median(r.p50_ms for r in results),
            p99_ms=statistics.median(r.p99_ms for r in results),
            errors=sum(r.errors for r in results),
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "requests_per_s": round(self.requests_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": self.errors,
        }


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk; `make bench` does)")
    return found


def run_wrk(
    url: str, body: bytes, concurrency: int, duration_s: float, cpu: int | None = None
) -> LoadResult:
    """POST `body` to `url` from `concurrency` keep-alive connections for `duration_s`."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "post.lua"
        script.write_text(_SCRIPT % body.decode())
        command = [
            wrk_binary(), "-t1", f"-c{concurrency}", f"-d{duration_s:.0f}s",
            "--timeout", "10s", "-s", str(script), url,
        ]  # fmt: skip
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    summary = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    return LoadResult(
        requests_per_s=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        errors=summary["errors"] + summary["non_2xx"],
    )

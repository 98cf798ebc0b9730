"""A real Prometheus (the Debian package's binary) for tests: scrape targets, query, stop."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from gateway.serving.embedded_vllm import free_port
from tests.support.waiting import answers, wait_until

SCRAPE_INTERVAL = "1s"


class PrometheusQueryFailed(Exception):
    """Prometheus refused a query (a PromQL error): the message is its own."""


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def _get(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.origin}{path}", params=params, timeout=10).json()
        if reply["status"] != "success":
            raise PrometheusQueryFailed(f"{reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) `expr` evaluates to now."""
        data = self._get("/api/v1/query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PrometheusQueryFailed(f"unexpected result type {data['resultType']}")

    def has_finite_value(self, expr: str) -> bool:
        """Whether `expr` returns at least one sample that is a number (not NaN or Inf)."""
        return any(math.isfinite(float(sample["value"][1])) for sample in self.query(expr))

    def targets_health(self) -> dict[str, str]:
        """Each active target's scrape URL and health ("up", "down", "unknown")."""
        data = self._get("/api/v1/targets")
        return {target["scrapeUrl"]: target["health"] for target in data["activeTargets"]}

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule with its health and last evaluation."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is missing: install Debian's package (apt-get install -y prometheus)"
    return found


def scrape_config(jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path]) -> dict[str, Any]:
    """Prometheus config scraping each job's origins (http://host:port) every second."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [urlsplit(origin).netloc for origin in origins]}],
            }
            for job, origins in jobs.items()
        ],
    }


@contextmanager
def running_prometheus(
    jobs: Mapping[str, Sequence[str]], folder: Path, rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping `jobs`; always stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(jobs, rule_files)))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is None and answers(f"{origin}/-/ready"), 30, "Prometheus"
        )
        yield Prometheus(origin)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

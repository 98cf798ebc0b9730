"""The flywheel end to end on a CPU: a bad adapter's captured failures train a better one,
which the gate accepts and a canary promotes, all through the running gateway.

1. A real vLLM serves the demo base model; `turnout serve` fronts it with the route
   `support-triage` -> `support-triage@v1` (random LoRA weights: invalid JSON) under the
   ticket schema, policy `flag`, capturing every failure and a share of successes.
2. Ticket traffic goes through the gateway; the gateway judges and captures every answer.
3. A simulated reviewer corrects every flagged answer through `POST /v1/feedback`.
4. `build_dataset` turns the gateway's captures + corrections + a seed file into splits.
5. `train` runs QLoRA (4-bit NF4 base) on the training split.
6. `evaluate` gates the candidate against the stable adapter on the held-out split.
7. A passing candidate is pushed to the registry as `support-triage@v2` with its provenance,
   a canary starts through the admin API, traffic continues, and the analysis promotes it.

The gate's checks are printed one per line as it decides. The last line printed is JSON:
`{"before": {...}, "after": {...}, "gate_checks": {...}, ...}` with the held-out split's
`schema_valid_rate` and `accuracy` for the stable adapter (before) and the candidate (after),
each gate check's result, and whether the canary was promoted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import AdaptersConfig, EmbeddedConfig
from gateway.protection.auth import hash_api_key
from gateway.serving.embedded_vllm import EmbeddedVllm, free_port, vllm_command
from gateway.serving.readiness import NotAnswering, wait_until_answers
from training.capture import read_captures
from training.dataset import DatasetConfig, DatasetInputs, build_dataset
from training.evaluate import (
    AdapterUnderTest,
    GateConfig,
    evaluate,
    read_suite,
    write_report,
)
from training.provenance import attachments, provenance
from training.qlora import TrainConfig, train
from training.tickets import (
    ROUTE,
    SCHEMA,
    Ticket,
    answer,
    generate_tickets,
    prompt_messages,
    write_regression_suite,
    write_seed_file,
)

SERVED_BASE = "tiny"
STABLE_REF = f"{ROUTE}@v1"
CANDIDATE_REF = f"{ROUTE}@v2"
ADMIN_KEY = "tk-flywheel-demo-operator"
# Measured on the 2-core CI machine: ~750 steps of 8 short examples reach >90% accuracy.
DEMO_TRAIN_CONFIG = TrainConfig(
    rank=16,
    alpha=32,
    dropout=0.0,
    learning_rate=2e-3,
    warmup_steps=20,
    epochs=8,
    batch_size=8,
    max_seq_len=256,
)
DEMO_GATE = GateConfig(min_schema_valid_rate=0.9, min_accuracy=0.8, max_tokens=24)


async def drive_traffic(
    gateway: str, tickets: list[Ticket], concurrency: int = 8
) -> tuple[dict[str, str], dict[str, int]]:
    """Send every ticket through the gateway's route; the gateway judges and captures them.

    Returns request id -> true label for the answers that were wrong (flagged by the schema, or
    valid JSON with the wrong label: what a reviewer working through the captured answers would
    correct), and the answers per arm.
    """
    limit = asyncio.Semaphore(concurrency)
    flagged: dict[str, str] = {}
    arms: dict[str, int] = {}

    async def one(client: httpx.AsyncClient, ticket: Ticket) -> None:
        request_id = uuid.uuid4().hex
        body = {
            "model": ROUTE,
            "messages": prompt_messages(ticket.text),
            "max_tokens": 24,
            "temperature": 0,
        }
        async with limit:
            reply = await client.post(
                "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
            )
        reply.raise_for_status()
        arm = reply.headers["x-turnout-arm"]
        arms[arm] = arms.get(arm, 0) + 1
        content = reply.json()["choices"][0]["message"]["content"] or ""
        if reply.headers["x-turnout-schema"] != "valid" or not _is_right(content, ticket.label):
            flagged[request_id] = ticket.label

    async with httpx.AsyncClient(base_url=gateway, timeout=120) as client:
        await asyncio.gather(*(one(client, ticket) for ticket in tickets))
    return flagged, arms


def _is_right(content: str, label: str) -> bool:
    try:
        return bool(json.loads(content) == json.loads(answer(label)))
    except ValueError:
        return False


def _gateway_config(work: Path, model_dir: Path, vllm_url: str, port: int) -> Path:
    admins = work / "admin-keys.yaml"
    admins.write_text(json.dumps({"admins": {"flywheel": [{"sha256": hash_api_key(ADMIN_KEY)}]}}))
    config = {
        "server": {"port": port},
        "base_model": SERVED_BASE,
        "backends": [{"url": vllm_url}],
        "adapters": {"store": str(model_dir / "adapters"), "max_lora_rank": 16},
        "routes": {ROUTE: {"stable": STABLE_REF, "schema": SCHEMA, "on_invalid": "flag"}},
        "state": {"dir": str(work / "state")},
        "auth": {"admin_keys_file": str(admins)},
        "capture": {
            "path": str(work / "captures.db"),
            # The demo's reviewer looks at every answer, so every answer is captured.
            "default": {"success_sample_rate": 1.0},
        },
    }
    path = work / "gateway.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def _running_gateway(config: Path, port: int, log: Path) -> Iterator[str]:
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    origin = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_answers(f"{origin}/healthz", 120, process, "the gateway")
        except NotAnswering as error:
            raise RuntimeError(f"{error}; see {log}") from None
        yield origin
    finally:
        process.terminate()
        process.wait(timeout=60)


def _wait_for_captures(captures: Path, route: str, expected: int, timeout_s: float = 60) -> None:
    """The gateway writes captures from a background thread: wait until they are on disk."""
    deadline = time.monotonic() + timeout_s
    while len(read_captures(captures, route)) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway captured fewer than {expected} answers")
        time.sleep(0.2)


def _say(message: str) -> None:
    print(f"[flywheel] {message}", file=sys.stderr, flush=True)


def _hand_off(
    gateway: str,
    model_dir: Path,
    adapter: Path,
    dataset: Path,
    work: Path,
    report: dict[str, Any],
    seed: int,
) -> bool:
    """Push the gated candidate with its provenance, start a canary, drive traffic until the
    analysis promotes it (or give up). Returns whether it was promoted."""
    registry = AdapterRegistry(str(model_dir / "adapters"))
    pushed = registry.push(
        adapter,
        ROUTE,
        registry.base(SERVED_BASE),
        AdapterLimits(max_lora_rank=16),
        version=CANDIDATE_REF.partition("@")[2],
        provenance=provenance(dataset, work / "run", report),
        created_by="turnout flywheel-demo",
        attachments=attachments(work / "run"),
    )
    _say(f"pushed {pushed.ref} with its dataset card, training run and gate report")
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    started = httpx.post(
        f"{gateway}/admin/routes/{ROUTE}/canary",
        json={
            "version": pushed.ref,
            "steps": [50, 100],
            "min_requests_per_step": 30,
            "min_seconds_per_step": 0,
            "reason": "flywheel: gate passed",
        },
        headers=admin,
        timeout=120,
    )
    started.raise_for_status()
    _say(f"canary of {pushed.ref} started at 50%")
    for round_number in range(12):
        _, arms = asyncio.run(
            drive_traffic(gateway, generate_tickets(40, seed + 10 + round_number))
        )
        state = httpx.get(f"{gateway}/admin/routes/{ROUTE}", headers=admin).json()
        _say(f"canary round {round_number + 1}: {arms}; stable is {state['stable']}")
        if state["stable"] == pushed.ref and not state.get("candidate"):
            _say(f"the analysis promoted {pushed.ref}")
            return True
    return False


def run_flywheel_demo(
    work: Path,
    *,
    seed: int = 0,
    traffic: int = 400,
    seed_examples: int = 800,
    train_config: TrainConfig = DEMO_TRAIN_CONFIG,
    gate: GateConfig = DEMO_GATE,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole loop in `work`; return `{"before", "after", "gate_passed", ...}`."""
    from adapters.demo import write_demo_model

    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "demo-model"
    if not (model_dir / "base").is_dir():
        _say(f"writing the demo model to {model_dir}")
        write_demo_model(model_dir)
    stable = AdapterUnderTest(STABLE_REF, (model_dir / "adapters" / ROUTE / "v1").resolve())
    schema_path = work / "schema.json"
    schema_path.write_text(json.dumps(SCHEMA, indent=2))
    suite_path = work / "suite.jsonl"
    write_regression_suite(suite_path)

    port = free_port()
    embedded = EmbeddedConfig(model=str(model_dir / "base"), gpu_memory_utilization=0.1)
    server = EmbeddedVllm(
        vllm_command(embedded, AdaptersConfig(max_lora_rank=16), SERVED_BASE, port),
        port,
        work / "vllm.log",
    )
    _say(f"starting vLLM on port {port} (log: {server.log_path})")
    server.start()
    promoted = False
    try:
        server.wait_ready(timeout_s=300)
        gateway_port = free_port()
        config = _gateway_config(work, model_dir, server.url, gateway_port)
        with _running_gateway(config, gateway_port, work / "gateway.log") as gateway:
            _say(f"sending {traffic} tickets through the gateway to {STABLE_REF}")
            failed, _ = asyncio.run(drive_traffic(gateway, generate_tickets(traffic, seed + 1)))
            captures = work / "captures.db"
            _wait_for_captures(captures, ROUTE, len(failed))
            for request_id, label in failed.items():
                httpx.post(
                    f"{gateway}/v1/feedback",
                    json={"request_id": request_id, "rating": -1, "correction": answer(label)},
                ).raise_for_status()
            _say(f"{len(failed)} answers were wrong; the reviewer corrected each")
            time.sleep(1.0)  # the capture writer's flush interval: the corrections reach disk

            seed_file = work / "seed.jsonl"
            write_seed_file(seed_file, generate_tickets(seed_examples, seed + 2))
            dataset = work / "dataset"
            card = build_dataset(
                DatasetInputs(ROUTE, captures=captures, seed_file=seed_file, schema=SCHEMA),
                dataset,
                DatasetConfig(seed=seed),
            )
            _say(
                "dataset: "
                + ", ".join(f"{name} {split['examples']}" for name, split in card["splits"].items())
                + f"; removed {card['removed']}"
            )
            _say("training the candidate (QLoRA, 4-bit NF4 base)")
            trained = train(
                str(model_dir / "base"),
                dataset,
                work / "run",
                train_config.model_copy(update={"seed": seed}),
                progress=progress,
            )
            candidate = AdapterUnderTest(CANDIDATE_REF, trained.adapter_dir.resolve())
            _say(f"gating {CANDIDATE_REF} against {STABLE_REF} on the held-out split")
            report = asyncio.run(
                evaluate(
                    server.url, ROUTE, candidate, stable, dataset, SCHEMA,
                    read_suite(suite_path), gate,
                )
            )  # fmt: skip
            for check in report["checks"]:
                result = "pass" if check["passed"] else "FAIL"
                _say(f"gate check {check['name']}: {result} ({check['reason']})")
            if report["passed"]:
                promoted = _hand_off(
                    gateway, model_dir, trained.adapter_dir, dataset, work, report, seed
                )
            else:
                _say("the gate refused the candidate: it stays out of the registry")
    finally:
        server.stop()
    json_path, md_path = write_report(report, work / "report")
    _say(f"report: {json_path} and {md_path}")

    def headline(scores: dict[str, Any]) -> dict[str, float]:
        return {
            "schema_valid_rate": round(scores["schema_valid_rate"], 4),
            "accuracy": round(scores["accuracy"], 4),
        }

    return {
        "before": headline(report["stable"]),
        "after": headline(report["candidate"]),
        "gate_passed": report["passed"],
        "gate_checks": {c["name"]: c["passed"] for c in report["checks"]},
        "canary_promoted": promoted,
        "test_examples": report["test_examples"],
        "train_steps": trained.metrics["steps"],
        "train_seconds": round(trained.metrics["train_seconds"], 1),
        "adapter": str(trained.adapter_dir),
        "dataset": str(dataset),
        "run": str(work / "run"),
        "report": str(json_path),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="turnout-flywheel-"))
    result = run_flywheel_demo(work, seed=args.seed, progress=not args.no_progress)
    print(json.dumps(result), flush=True)
    return 0 if result["gate_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
